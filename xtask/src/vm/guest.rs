//! What the guest runs: the profiles (one configuration each, checked with
//! `sonde check`; most then run integration-test binaries of tests/tests/
//! with the profile's settings forced on every agent they start), and the
//! root file system that carries them: busybox, the static binaries, the
//! kernel's modules, `/init` (init.sh) and its parameters.

use std::path::Path;

use anyhow::Context as _;

use super::{initramfs::Archive, kernels::Kernel, payload::Payload};

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

/// Every profile's `sonde check` configuration starts from this: loopback
/// only (the guest has no other interface). Its tests start from the
/// harness's own configuration (`Config` in tests/src/lib.rs).
const BASE: &[(&str, &str, &str)] = &[("network", "interfaces", r#"["lo"]"#)];

/// Exact UDP packet and byte counts into a veth pair, against the
/// interface's own statistics; the ingress profiles force its hook.
const INGRESS_UDP: &str = "packets::ingress_udp_is_counted_exactly_and_matches_kernel_stats";
/// Refused connections into a veth pair: failures and resets sent and
/// received; the TCP profiles force its tier.
const TCP_RESETS: &str = "tcp::refused_connections_count_failures_and_resets";
/// N connects across a veth pair: the peer's connect-latency count rises
/// by exactly N.
const TCP_CONNECTS: &str = "tcp_link::connects_are_counted_exactly_per_peer";
/// Datagrams to a closed port: drops with reason NO_SOCKET on the lab's
/// interface, exactly the namespace's own Udp NoPorts (no iptables in the
/// guest for the firewall test).
const CLOSED_PORT_DROPS: &str =
    "drops::datagrams_to_a_closed_port_are_counted_as_the_kernel_counts_them";
/// The link tests, for the profiles that force a TCP tier: exact connect
/// counts, handshakes and RTTs past a netem delay, and retransmits under
/// netem loss against the kernel's RetransSegs (bounds by tier).
const TCP_LINK: &str = "tcp_link";

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
        // Their tests pick what they test themselves: syscalls on raw
        // tracepoints by default and on the classic tracepoint forced,
        // process events through the ring buffer and through perf event
        // arrays (so `events-perf` only checks).
        // `leftovers` forces netlink TC itself: on 6.1 that is the
        // default path, the one whose filters outlive a killed agent.
        tests: &[
            "syscalls",
            "process",
            INGRESS_UDP,
            TCP_CONNECTS,
            CLOSED_PORT_DROPS,
            "leftovers",
        ],
    },
    Profile {
        name: "events-perf",
        about: "`[events] transport = \"perf_event_array\"`: events through perf event \
                arrays, the fallback for kernels without the BPF ring buffer (before 5.8)",
        settings: &[("events", "transport", r#""perf_event_array""#)],
        expect: None,
        needs: None,
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
        tests: &[TCP_RESETS, TCP_LINK],
    },
    Profile {
        name: "tcp-raw_tracepoint",
        about: "`[tcp] hook = \"raw_tracepoint\"`",
        settings: &[("tcp", "hook", r#""raw_tracepoint""#)],
        expect: Some(Expect {
            hook: "inet_sock_set_state",
            mode: Some("raw_tracepoint"),
        }),
        needs: None,
        tests: &[TCP_RESETS, TCP_LINK],
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
        tests: &[TCP_RESETS, TCP_LINK],
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
        tests: &[TCP_RESETS, TCP_LINK],
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
        "PROFILES=\"{}\"\nTEST_TIMEOUT_S={TEST_TIMEOUT_S}\n\
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
                .ends_with("\n[network]\ninterfaces = [\"lo\"]\n")
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
}
