//! What the guest runs: the profiles (one configuration each, checked with
//! `sonde check`; some run integration-test binaries of tests/tests/ with
//! the profile's settings forced on every agent they start, others are
//! measured with `sonde run` under a known workload), and the root file
//! system that carries them: busybox, the static binaries, the kernel's
//! modules, `/init` (init.sh) and its parameters.

use std::path::Path;

use anyhow::Context as _;

use super::{initramfs::Archive, kernels::Kernel, payload::Payload};

/// TCP connects per TCP count.
pub const TCP_M: u64 = 20;
/// netem's delay on every packet over lo: a handshake (two trips) then takes
/// ≥ 100 ms, past the 67 ms log2 bucket.
pub const NETEM_DELAY_MS: u64 = 50;
/// netem's loss on lo while the retransmit count's stream runs.
pub const NETEM_LOSS_PCT: u64 = 20;
/// Segments of that stream (1000 bytes each, 10 ms apart).
pub const LOSS_MESSAGES: u64 = 50;

/// Bounds inside the guest (seconds): the agent's start, a counter reaching
/// its target and settling, the agent's exit after SIGTERM.
const START_TIMEOUT_S: u32 = 90;
const SETTLE_TIMEOUT_S: u32 = 30;
const STOP_TIMEOUT_S: u32 = 20;
/// One integration-test binary's whole run in the guest (seconds).
const TEST_TIMEOUT_S: u32 = 900;
/// The factor on the test harness's agent start and stop timeouts
/// (`SONDE_TEST_TIMEOUT_SCALE`): under emulation the agent loads its
/// programs many times slower than on a host.
const TIMEOUT_SCALE: u32 = 4;

/// The integration tests the guest cannot run, by name, with the reason:
/// every test binary a profile runs is run with `--skip NAME` for each.
pub const EXCLUDED: &[(&str, &str)] = &[
    (
        "getppid_count_agrees_with_bpftrace",
        "bpftrace referee: the guest has no bpftrace",
    ),
    (
        "nanosleep_latency_lands_in_the_right_bucket",
        "a latency, not a count: under software emulation a 50 ms sleep overshoots \
         past the 67 ms bucket bound it asserts",
    ),
];

/// Every profile's base: loopback only (the guest has no other interface),
/// a fast collector so counts settle quickly, and no cost governor: under
/// software emulation the agent's share of a CPU is tens of times a real
/// host's, and the governor would shed the RTT samples the counts check.
const BASE: &[(&str, &str, &str)] = &[
    ("network", "interfaces", r#"["lo"]"#),
    ("collector", "interval_ms", "200"),
    ("mapek", "govern_cost", "false"),
];

/// A counting check run under `sonde run`. Several may share one workload
/// (the init script's `count_NAME` function), which reports a value for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// `sonde_tcp_connect_duration_seconds_count` rises by at least TCP_M.
    TcpConnects,
    /// Under netem delay (NETEM_DELAY_MS on every packet over lo), TCP_M
    /// connects: connect-latency samples above 67 ms rise by at least TCP_M ...
    DelayedConnectsSlow,
    /// ... and none at or under 67 ms.
    DelayedConnectsFast,
    /// RTT samples (the connects' and the scrapes') above 67 ms rise ...
    DelayedRttSlow,
    /// ... and none at or under 67 ms.
    DelayedRttFast,
    /// Under netem loss (NETEM_LOSS_PCT over lo), an established connection
    /// sends LOSS_MESSAGES segments: `sonde_tcp_retransmits_total` rises by
    /// at least 1, and by exactly as much as the kernel's own RetransSegs.
    LossRetransmits,
    /// The same on the kprobe and tracepoint tiers, whose programs the kernel
    /// skips while the CPU already runs such a program (a timer softirq on
    /// the way out of an interrupt that came during one): at most the
    /// kernel's count, and short of it by at most a tenth (or 1).
    LossRetransmitsSkippable,
}

/// Exact UDP packet and byte counts into a veth pair, against the
/// interface's own statistics; the ingress profiles force its hook.
const INGRESS_UDP: &str = "packets::ingress_udp_is_counted_exactly_and_matches_kernel_stats";
/// Refused connections into a veth pair: failures and resets sent and
/// received; the TCP profiles force its tier.
const TCP_RESETS: &str = "tcp::refused_connections_count_failures_and_resets";

/// Every TCP signal's count, for the profiles that force a TCP tier, with
/// the retransmit check that tier can be held to.
const fn tcp_signals(retransmits: Count) -> [Count; 6] {
    [
        Count::TcpConnects,
        Count::DelayedConnectsSlow,
        Count::DelayedConnectsFast,
        Count::DelayedRttSlow,
        Count::DelayedRttFast,
        retransmits,
    ]
}

/// fentry: exact.
const TCP_SIGNALS: [Count; 6] = tcp_signals(Count::LossRetransmits);
/// kprobe and tracepoint: runs the kernel skips are allowed for.
const TCP_SIGNALS_SKIPPABLE: [Count; 6] = tcp_signals(Count::LossRetransmitsSkippable);

impl Count {
    /// The init script's function (`count_NAME`).
    fn function(self) -> &'static str {
        match self {
            Count::TcpConnects => "tcp",
            Count::DelayedConnectsSlow
            | Count::DelayedConnectsFast
            | Count::DelayedRttSlow
            | Count::DelayedRttFast => "delay",
            Count::LossRetransmits | Count::LossRetransmitsSkippable => "loss",
        }
    }

    /// The key of the `value` line the guest reports.
    pub fn key(self) -> &'static str {
        match self {
            Count::TcpConnects => "tcp_connects",
            Count::DelayedConnectsSlow => "connects_slow",
            Count::DelayedConnectsFast => "connects_fast",
            Count::DelayedRttSlow => "rtt_slow",
            Count::DelayedRttFast => "rtt_fast",
            Count::LossRetransmits | Count::LossRetransmitsSkippable => "retransmits",
        }
    }

    /// The key of an independent counter the guest reports beside this one,
    /// which the judgement compares with.
    pub fn reference_key(self) -> Option<&'static str> {
        match self {
            Count::LossRetransmits | Count::LossRetransmitsSkippable => Some("kernel_retrans_segs"),
            _ => None,
        }
    }

    /// The key of Sonde's own count of the runs the kernel skipped for the
    /// programs behind this count (sonde_bpf_program_missed_runs_total):
    /// the reference minus these is what the count must reach.
    pub fn missed_key(self) -> Option<&'static str> {
        match self {
            Count::LossRetransmits | Count::LossRetransmitsSkippable => {
                Some("retransmit_runs_missed")
            }
            _ => None,
        }
    }

    /// What the check asserts, for the report.
    pub fn describe(self) -> String {
        match self {
            Count::TcpConnects => {
                format!(
                    "{TCP_M} TCP connects → connect latency samples ≥ +{TCP_M} \
                     (the guest's scrapes of /metrics are connects too)"
                )
            }
            Count::DelayedConnectsSlow => format!(
                "netem delay {NETEM_DELAY_MS} ms on lo, {TCP_M} connects → connect \
                 latency samples > 67 ms ≥ +{TCP_M}"
            ),
            Count::DelayedConnectsFast => format!(
                "netem delay {NETEM_DELAY_MS} ms on lo → connect latency samples ≤ 67 ms +0"
            ),
            Count::DelayedRttSlow => {
                format!("netem delay {NETEM_DELAY_MS} ms on lo → RTT samples > 67 ms ≥ +1")
            }
            Count::DelayedRttFast => {
                format!("netem delay {NETEM_DELAY_MS} ms on lo → RTT samples ≤ 67 ms +0")
            }
            Count::LossRetransmits => format!(
                "netem loss {NETEM_LOSS_PCT} % on lo under {LOSS_MESSAGES} segments of an \
                 established connection → retransmits ≥ +1 and = the kernel's RetransSegs"
            ),
            Count::LossRetransmitsSkippable => format!(
                "netem loss {NETEM_LOSS_PCT} % on lo under {LOSS_MESSAGES} segments of an \
                 established connection → retransmits ≥ +1, ≤ the kernel's RetransSegs and \
                 short of it, beyond the runs the kernel skipped and counted, by ≤ max(1, \
                 10 %) (it skips a kprobe or tracepoint program while the CPU is in another; \
                 it counts those skips from Linux 6.7)"
            ),
        }
    }

    /// Whether `delta` (after − before) is right, given the reference
    /// counter's delta where the count has one, and the runs of the count's
    /// programs the kernel skipped and said so (`missed`). A skipped run
    /// may or may not have lost a count (a skipped nested call would not
    /// have counted anyway), so the skips bound the shortfall rather than
    /// equal it: the count never exceeds the kernel's, and the kernel's
    /// never exceeds the count plus the skips.
    pub fn judge(self, delta: f64, reference: Option<f64>, missed: f64) -> bool {
        match self {
            Count::TcpConnects | Count::DelayedConnectsSlow => delta >= TCP_M as f64,
            Count::DelayedConnectsFast | Count::DelayedRttFast => delta == 0.0,
            Count::DelayedRttSlow => delta >= 1.0,
            Count::LossRetransmits => reference
                .is_some_and(|kernel| delta >= 1.0 && delta <= kernel && delta + missed >= kernel),
            Count::LossRetransmitsSkippable => reference.is_some_and(|kernel| {
                delta >= 1.0
                    && delta <= kernel
                    && kernel - (delta + missed) <= (kernel * 0.1).max(1.0)
            }),
        }
    }
}

/// What a profile's `sonde check` must show: an attachment whose hook
/// contains `hook` (and, if given, in `mode`).
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub hook: &'static str,
    pub mode: Option<&'static str>,
}

#[derive(Debug)]
pub struct Profile {
    pub name: &'static str,
    pub about: &'static str,
    /// (section, key, TOML value) on top of BASE.
    pub settings: &'static [(&'static str, &'static str, &'static str)],
    pub expect: Option<Expect>,
    /// A `sonde check` capability line (`kprobes`, `fentry/fexit`) that must
    /// say yes for the profile to apply; where it says no, a refusal is
    /// the right answer and is reported as n/a.
    pub needs: Option<&'static str>,
    pub counts: &'static [Count],
    /// Integration tests run in the guest with `settings` forced
    /// (`SONDE_TEST_CONFIG`), the same code that checks these counts on
    /// the host: `BINARY` (tests/tests/BINARY.rs, all its tests but
    /// [`EXCLUDED`]) or `BINARY::TEST` (that one).
    pub tests: &'static [&'static str],
}

/// The profiles, in the order the guest runs them. `auto` comes first: its
/// `sonde check` output is the kernel's capability and hook table.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "auto",
        about: "defaults: every signal on the hook the kernel's own probing picks",
        settings: &[],
        expect: None,
        needs: None,
        counts: &[Count::TcpConnects],
        // Their tests pick what they test themselves: syscalls on raw
        // tracepoints by default and on the classic tracepoint forced,
        // process events through the ring buffer and through perf event
        // arrays (so `events-perf` only checks).
        tests: &["syscalls", "process", INGRESS_UDP],
    },
    Profile {
        name: "events-perf",
        about: "`[events] transport = \"perf_event_array\"`: events through perf event \
                arrays, the fallback for kernels without the BPF ring buffer (before 5.8)",
        settings: &[("events", "transport", r#""perf_event_array""#)],
        expect: None,
        needs: None,
        counts: &[],
        tests: &[],
    },
    Profile {
        name: "syscalls-raw_tracepoint",
        about: "`[syscalls] hook = \"raw_tracepoint\"`",
        settings: &[("syscalls", "hook", r#""raw_tracepoint""#)],
        expect: Some(Expect {
            hook: "sys_enter",
            mode: Some("raw_tracepoint"),
        }),
        needs: None,
        counts: &[],
        tests: &[],
    },
    Profile {
        name: "syscalls-tracepoint",
        about: "`[syscalls] hook = \"tracepoint\"`",
        settings: &[("syscalls", "hook", r#""tracepoint""#)],
        expect: Some(Expect {
            hook: "sys_enter",
            mode: Some("tracepoint"),
        }),
        needs: None,
        counts: &[],
        tests: &[],
    },
    Profile {
        name: "ingress-xdp-generic",
        about: "`[network] xdp_mode = \"generic\"`: ingress through generic XDP",
        settings: &[("network", "xdp_mode", r#""generic""#)],
        expect: Some(Expect {
            hook: "xdp:lo",
            mode: Some("generic"),
        }),
        needs: None,
        counts: &[],
        tests: &[INGRESS_UDP],
    },
    Profile {
        name: "ingress-tc",
        about: "`[network] xdp_mode = \"off\"`: ingress through TC",
        settings: &[("network", "xdp_mode", r#""off""#)],
        expect: Some(Expect {
            hook: "tc_ingress:lo",
            mode: None,
        }),
        needs: None,
        counts: &[],
        tests: &[INGRESS_UDP],
    },
    Profile {
        name: "tcp-fentry",
        about: "`[tcp] hook = \"fentry\"`",
        settings: &[("tcp", "hook", r#""fentry""#)],
        expect: Some(Expect {
            hook: "",
            mode: Some("fentry"),
        }),
        needs: Some("fentry/fexit"),
        counts: &TCP_SIGNALS,
        tests: &[TCP_RESETS],
    },
    Profile {
        name: "tcp-kprobe",
        about: "`[tcp] hook = \"kprobe\"`",
        settings: &[("tcp", "hook", r#""kprobe""#)],
        expect: Some(Expect {
            hook: "",
            mode: Some("kprobe"),
        }),
        needs: Some("kprobes"),
        counts: &TCP_SIGNALS_SKIPPABLE,
        tests: &[TCP_RESETS],
    },
    Profile {
        name: "tcp-tracepoint",
        about: "`[tcp] hook = \"tracepoint\"`",
        settings: &[("tcp", "hook", r#""tracepoint""#)],
        expect: Some(Expect {
            hook: "inet_sock_set_state",
            mode: Some("tracepoint"),
        }),
        needs: None,
        counts: &TCP_SIGNALS_SKIPPABLE,
        tests: &[TCP_RESETS],
    },
];

/// The binary of a profile's test entry (`BINARY` or `BINARY::TEST`).
pub fn test_binary(entry: &str) -> &str {
    entry.split("::").next().unwrap_or(entry)
}

pub fn profile(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

impl Profile {
    /// `SONDE_TEST_CONFIG` for the profile's tests: its own settings (the
    /// base ones are the guest's concern; the harness has its defaults).
    pub fn forced_settings(&self) -> String {
        self.settings
            .iter()
            .map(|(section, key, value)| format!("{section}.{key} = {value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The profile's configuration file.
    pub fn config_toml(&self) -> String {
        let mut sections: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
        for &(section, key, value) in BASE.iter().chain(self.settings) {
            let i = match sections.iter().position(|(s, _)| *s == section) {
                Some(i) => i,
                None => {
                    sections.push((section, Vec::new()));
                    sections.len() - 1
                }
            };
            let keys = &mut sections[i].1;
            match keys.iter_mut().find(|(k, _)| *k == key) {
                Some(kv) => kv.1 = value,
                None => keys.push((key, value)),
            }
        }
        let mut out = format!("# vm-test profile {}: {}\n", self.name, self.about);
        for (section, keys) in sections {
            out.push_str(&format!("\n[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}

/// Writes the guest's root file system for `kernel` to `out`.
pub fn build_initramfs(
    payload: &Payload,
    kernel: &Kernel,
    profiles: &[&Profile],
    out: &Path,
) -> anyhow::Result<()> {
    let mut a = Archive::new();
    a.copy("bin/busybox", 0o755, &payload.busybox)?;
    a.symlink("bin/sh", "busybox")?;
    a.file("init", 0o755, include_str!("init.sh").as_bytes().to_vec())?;
    a.copy("vm/bin/sonde", 0o755, &payload.sonde)?;
    a.copy("vm/bin/sonde-workload", 0o755, &payload.workload)?;
    for tool in &payload.tools {
        let name = tool.file_name().context("tool path")?.to_string_lossy();
        a.copy(&format!("vm/bin/{name}"), 0o755, tool)?;
    }
    for lib in &payload.tool_libraries {
        a.copy(&lib.to_string_lossy(), 0o755, lib)?;
    }
    a.dir("vm/tests")?;
    let mut binaries: Vec<&str> = profiles
        .iter()
        .flat_map(|p| p.tests.iter().map(|t| test_binary(t)))
        .collect();
    binaries.sort_unstable();
    binaries.dedup();
    for name in binaries {
        let bin = payload
            .tests
            .get(name)
            .with_context(|| format!("no integration-test binary {name:?} was built"))?;
        a.copy(&format!("vm/tests/{name}"), 0o755, bin)?;
    }
    let skips: Vec<String> = EXCLUDED
        .iter()
        .map(|(name, _)| format!("--skip {name}"))
        .collect();
    a.file(
        "vm/skip",
        0o644,
        format!("{}\n", skips.join(" ")).into_bytes(),
    )?;
    a.dir("vm/modules")?;
    for m in &kernel.modules {
        let name = m.file_name().context("module path")?.to_string_lossy();
        a.copy(&format!("vm/modules/{name}"), 0o644, m)?;
    }
    a.file("vm/params", 0o644, params(profiles).into_bytes())?;
    for p in profiles {
        a.file(
            &format!("vm/profiles/{}.toml", p.name),
            0o644,
            p.config_toml().into_bytes(),
        )?;
        let mut counts: Vec<&str> = p.counts.iter().map(|c| c.function()).collect();
        counts.dedup(); // a workload's counts are listed together
        a.file(
            &format!("vm/profiles/{}.counts", p.name),
            0o644,
            format!("{}\n", counts.join(" ")).into_bytes(),
        )?;
        a.file(
            &format!("vm/profiles/{}.tests", p.name),
            0o644,
            format!("{}\n", p.tests.join(" ")).into_bytes(),
        )?;
        a.file(
            &format!("vm/profiles/{}.force", p.name),
            0o644,
            format!("{}\n", p.forced_settings()).into_bytes(),
        )?;
    }
    for dir in ["proc", "sys", "dev", "tmp", "run", "var"] {
        a.dir(dir)?;
    }
    // iproute2 keeps its named network namespaces in /var/run/netns.
    a.symlink("var/run", "/run")?;
    a.write_to(out)?;
    println!(
        "initramfs {} ({:.1} MiB)",
        out.display(),
        a.payload_bytes() as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// `/vm/params`, sourced by init.sh.
fn params(profiles: &[&Profile]) -> String {
    let names: Vec<&str> = profiles.iter().map(|p| p.name).collect();
    format!(
        "PROFILES=\"{}\"\nTCP_M={TCP_M}\n\
         NETEM_DELAY_MS={NETEM_DELAY_MS}\nNETEM_LOSS_PCT={NETEM_LOSS_PCT}\n\
         LOSS_MESSAGES={LOSS_MESSAGES}\n\
         START_TIMEOUT_S={START_TIMEOUT_S}\nSETTLE_TIMEOUT_S={SETTLE_TIMEOUT_S}\n\
         STOP_TIMEOUT_S={STOP_TIMEOUT_S}\nTEST_TIMEOUT_S={TEST_TIMEOUT_S}\n\
         TIMEOUT_SCALE={TIMEOUT_SCALE}\n",
        names.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_settings_merge_into_the_base_sections() {
        let p = profile("ingress-tc").unwrap();
        let toml = p.config_toml();
        assert_eq!(toml.matches("\n[network]\n").count(), 1, "{toml}");
        assert!(
            toml.contains("interfaces = [\"lo\"]\nxdp_mode = \"off\"\n"),
            "{toml}"
        );
        assert!(
            profile("auto")
                .unwrap()
                .config_toml()
                .contains("[collector]\ninterval_ms = 200\n")
        );
    }

    #[test]
    fn profile_names_are_unique_and_shell_safe() {
        for (i, p) in PROFILES.iter().enumerate() {
            assert!(
                p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{}",
                p.name
            );
            assert!(PROFILES[..i].iter().all(|q| q.name != p.name), "{}", p.name);
        }
        assert_eq!(PROFILES[0].name, "auto");
    }

    #[test]
    fn forced_settings_are_the_profiles_own() {
        assert_eq!(
            profile("tcp-kprobe").unwrap().forced_settings(),
            r#"tcp.hook = "kprobe""#
        );
        assert_eq!(profile("auto").unwrap().forced_settings(), "");
    }

    #[test]
    fn counts_judge_their_bounds() {
        assert!(Count::TcpConnects.judge(TCP_M as f64 * 2.0, None, 0.0));
        assert!(!Count::TcpConnects.judge(TCP_M as f64 - 1.0, None, 0.0));
        assert!(Count::DelayedRttFast.judge(0.0, None, 0.0));
        assert!(!Count::DelayedRttFast.judge(1.0, None, 0.0));
        assert!(Count::LossRetransmits.judge(5.0, Some(5.0), 0.0));
        assert!(!Count::LossRetransmits.judge(4.0, Some(5.0), 0.0));
        assert!(!Count::LossRetransmits.judge(6.0, Some(5.0), 0.0));
        assert!(!Count::LossRetransmits.judge(0.0, Some(0.0), 0.0));
        assert!(!Count::LossRetransmits.judge(3.0, None, 0.0));
        assert!(Count::LossRetransmitsSkippable.judge(9.0, Some(10.0), 0.0));
        assert!(!Count::LossRetransmitsSkippable.judge(8.0, Some(10.0), 0.0));
        assert!(!Count::LossRetransmitsSkippable.judge(11.0, Some(10.0), 0.0));
        // Seen on 6.12: 3 skipped kprobe runs, of which 1 lost a count.
        assert!(Count::LossRetransmitsSkippable.judge(9.0, Some(10.0), 3.0));
        assert!(Count::LossRetransmits.judge(9.0, Some(10.0), 1.0));
        assert!(!Count::LossRetransmits.judge(9.0, Some(10.0), 0.0));
    }
}
