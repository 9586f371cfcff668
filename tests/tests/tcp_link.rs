//! TCP over a link the test owns: two network namespaces joined by a veth
//! pair, so nothing but the test's own traffic crosses it. Connect latency
//! counted exactly, handshakes and RTT slowed past a known delay, and
//! retransmits under loss checked against the two kernels' own RetransSegs.
//!
//! The kernel matrix (`cargo xtask vm-test`) runs this binary in its VMs
//! once per TCP tier (`SONDE_TEST_CONFIG='tcp.hook = "kprobe"'`): the same
//! code checks these counts on the host and on every guest kernel. Delay and
//! loss come from netem where the kernel has `sch_netem` (Debian's kernels
//! do); where it has not, from iptables in the namespaces (a dropped SYN for
//! the delay, random drops for the loss), and what iptables cannot do (delay
//! every packet, for the RTT) is skipped with a `measured:` line saying why.

use std::time::Duration;

use sonde_tests::{
    Agent, Config, NetNs, Scrape, Workload, agent::scaled, net::snmp_field, require_root, sys,
};

/// Namespace of the connecting side and of the listening side.
const CLIENT_NS: &str = "sonde-link-c";
const SERVER_NS: &str = "sonde-link-s";
/// The veth ends (one in each namespace) and their addresses: unique to
/// these tests, so Sonde's per-peer series count their traffic only.
const CLIENT_IF: &str = "sondelc0";
const SERVER_IF: &str = "sondels0";
const CLIENT_IP: &str = "10.213.2.1";
const SERVER_IP: &str = "10.213.2.2";

/// netem's delay on each end's egress: a round trip, and so a handshake
/// and every smoothed RTT of the link, takes ≥ 100 ms, past the 2^26 ns
/// (67 ms) bucket.
const DELAY_MS: u64 = 50;
/// The upper bound of the last log2 bucket a 100 ms round trip cannot
/// fall in.
const FAST_LE: &str = "0.067108864";
/// netem's (or iptables') loss, in percent, on each direction while the
/// retransmit count's stream runs.
const LOSS_PCT: u64 = 20;
/// Segments of that stream (1000 bytes each, 10 ms apart).
const LOSS_MESSAGES: &str = "50";

/// Scrape spacing for settling: longer than the collector's 200 ms.
const SPACING: Duration = Duration::from_millis(500);

/// Two namespaces joined by a veth pair with a 64 KiB MTU (so every
/// segment of the streams below is one segment, as on loopback, and the
/// kernel's RetransSegs counts what Sonde's per-retransmission hooks see).
/// Deleting the namespaces deletes the pair and any qdisc on it.
struct Link {
    client: NetNs,
    server: NetNs,
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// How the link was slowed or thinned.
enum Impairment {
    Netem,
    /// No sch_netem: iptables instead (with tc's error).
    Iptables(String),
    /// Neither (with the reasons).
    Neither(String),
}

impl std::fmt::Display for Impairment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Impairment::Netem => write!(f, "netem"),
            Impairment::Iptables(no_netem) => write!(f, "iptables (no sch_netem: {no_netem})"),
            Impairment::Neither(why) => write!(f, "nothing ({why})"),
        }
    }
}

impl Link {
    fn new() -> Link {
        let client = NetNs::new(CLIENT_NS);
        let server = NetNs::new(SERVER_NS);
        let link = Link { client, server };
        sys::must(&mut sys::cmd(
            "ip",
            &[
                "link", "add", CLIENT_IF, "netns", CLIENT_NS, "type", "veth", "peer", "name",
                SERVER_IF, "netns", SERVER_NS,
            ],
        ));
        for (ns, dev, ip) in [
            (&link.client, CLIENT_IF, CLIENT_IP),
            (&link.server, SERVER_IF, SERVER_IP),
        ] {
            sys::must(&mut ns.exec(&["ip", "link", "set", "dev", dev, "mtu", "65535", "up"]));
            sys::must(&mut ns.exec(&["ip", "addr", "add", &format!("{ip}/30"), "dev", dev]));
        }
        link
    }

    fn ends(&self) -> [(&NetNs, &'static str); 2] {
        [(&self.client, CLIENT_IF), (&self.server, SERVER_IF)]
    }

    fn ns(&self, side: Side) -> &NetNs {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    /// netem with `netem` (its arguments) on both ends' egress; where the
    /// kernel has no netem, the iptables `rules` (each appended in its
    /// side's namespace).
    fn impair(&self, netem: &str, rules: &[(Side, String)]) -> Impairment {
        let mut tc_error = None;
        for (ns, dev) in self.ends() {
            let mut tc = vec!["tc", "qdisc", "replace", "dev", dev, "root", "netem"];
            tc.extend(netem.split_whitespace());
            if let Err(e) = sys::output(&mut ns.exec(&tc)) {
                // The command's last line is tc's own message.
                let e = e.to_string();
                tc_error = Some(e.trim_end().lines().last().unwrap_or_default().to_owned());
                break;
            }
        }
        let Some(tc_error) = tc_error else {
            return Impairment::Netem;
        };
        self.clear();
        if !sys::have("iptables") {
            return Impairment::Neither(format!("no sch_netem ({tc_error}) and no iptables"));
        }
        for (side, rule) in rules {
            let mut args = vec!["iptables", "-A"];
            args.extend(rule.split_whitespace());
            sys::must(&mut self.ns(*side).exec(&args));
        }
        Impairment::Iptables(tc_error)
    }

    /// Takes delay and loss off the link.
    fn clear(&self) {
        for (ns, dev) in self.ends() {
            sys::quiet(&mut ns.exec(&["tc", "qdisc", "del", "dev", dev, "root"]));
        }
        if sys::have("iptables") {
            for (ns, _) in self.ends() {
                sys::quiet(&mut ns.exec(&["iptables", "-F"]));
            }
        }
    }

    /// The kernels' own count of retransmitted segments, both namespaces
    /// (TCP's RetransSegs in /proc/net/snmp is per namespace).
    fn kernel_retrans_segs(&self) -> f64 {
        self.ends()
            .iter()
            .map(|(ns, _)| {
                let snmp = sys::must(&mut ns.exec(&["cat", "/proc/net/snmp"]));
                snmp_field(&snmp, "Tcp:", "RetransSegs")
                    .unwrap_or_else(|| panic!("no Tcp: RetransSegs in /proc/net/snmp:\n{snmp}"))
            })
            .sum()
    }

    /// Sockets in either namespace in a state that can still retransmit:
    /// anything but TIME_WAIT (06) and LISTEN (0A) in /proc/net/tcp.
    fn unsettled_sockets(&self) -> usize {
        self.ends()
            .iter()
            .map(|(ns, _)| {
                sys::must(&mut ns.exec(&["cat", "/proc/net/tcp"]))
                    .lines()
                    .skip(1)
                    .filter(|l| !matches!(l.split_whitespace().nth(3), Some("06" | "0A")))
                    .count()
            })
            .sum()
    }
}

fn peer(ip: &str) -> [(&str, &str); 1] {
    [("peer", ip)]
}

/// Handshakes to `ip`, by Sonde's per-peer connect-latency histogram.
fn peer_connects(s: &Scrape, ip: &str) -> f64 {
    s.value_or_zero("sonde_peer_tcp_connect_duration_seconds_count", &peer(ip))
}

/// Handshakes to the server.
fn connects(s: &Scrape) -> f64 {
    peer_connects(s, SERVER_IP)
}

/// Of those, the ones at or under 67 ms.
fn fast_connects(s: &Scrape) -> f64 {
    s.value_or_zero(
        "sonde_peer_tcp_connect_duration_seconds_bucket",
        &[("peer", SERVER_IP), ("le", FAST_LE)],
    )
}

/// A per-peer series summed over both ends of the link.
fn link_sum(s: &Scrape, name: &str) -> f64 {
    [CLIENT_IP, SERVER_IP]
        .iter()
        .map(|ip| s.value_or_zero(name, &peer(ip)))
        .sum()
}

/// `count` connects to `to`, one after the other, from namespace `from`
/// (the host's own when None).
fn connect_n(from: Option<&NetNs>, to: &str, count: usize) {
    for i in 0..count {
        let args = ["tcp-connect", to];
        let timeout = scaled(Duration::from_secs(15));
        let (_, lines) = match from {
            Some(ns) => Workload::run_in(ns, &args, timeout),
            None => Workload::run(&args, timeout),
        };
        assert!(
            lines.iter().any(|l| l == "connected"),
            "connect {i} to {to}: {lines:?}"
        );
    }
}

/// The agent with only the TCP signal on. Under a delay, each SYN-ACK is
/// processed in a softirq run at the exit of whatever interrupt released it,
/// so it can land inside another tracing program on that CPU; a kprobe or
/// classic tracepoint program (these tiers' state program) is then skipped
/// by the kernel (counted in `sonde_bpf_program_missed_runs_total` from
/// Linux 6.7, silently before). The fentry and raw tracepoint tiers are
/// not exposed to it. The delayed-handshake test measures the timing, so
/// it runs without the other signals' classic tracepoints.
fn tcp_only() -> Config {
    ["syscalls", "drops", "runqueue", "process", "block"]
        .into_iter()
        .fold(Config::new(), |c, signal| c.set(signal, "enabled", "false"))
}

/// Runs of the TCP state program the kernel skipped.
fn missed_state_runs(s: &Scrape) -> f64 {
    s.series("sonde_bpf_program_missed_runs_total", &[])
        .into_iter()
        .filter(|x| {
            x.label("program")
                .is_some_and(|p| p.starts_with("sonde_tcp_state"))
        })
        .map(|x| x.value)
        .sum()
}

/// A listener in the server namespace on `port`.
fn listen(link: &Link, port: u16) -> (Workload, String) {
    let at = format!("{SERVER_IP}:{port}");
    let mut w = Workload::spawn_in(&link.server, &["tcp-listen", &at, "300"]);
    w.expect_line("ready", Duration::from_secs(10));
    (w, at)
}

/// Waits until `f` rose by at least `by` since `before`, then until it
/// settles; the settled scrape.
fn settled(
    agent: &Agent,
    what: &str,
    before: &Scrape,
    by: f64,
    f: impl Fn(&Scrape) -> f64 + Copy,
) -> Scrape {
    let _ = agent.try_wait_for(scaled(Duration::from_secs(10)), |s| f(s) - f(before) >= by);
    agent.wait_stable(what, scaled(Duration::from_secs(20)), SPACING, f)
}

/// The mode the TCP retransmit programs are attached with (`fentry`,
/// `kprobe`, `tracepoint`).
fn retransmit_tier(s: &Scrape) -> String {
    s.series("sonde_probe_attached", &[])
        .into_iter()
        .find(|x| {
            x.value > 0.0
                && x.label("program")
                    .is_some_and(|p| p.starts_with("sonde_tcp_retransmit"))
        })
        .and_then(|x| x.label("mode"))
        .unwrap_or_else(|| {
            panic!(
                "no TCP retransmit program attached:\n{}",
                s.grep("sonde_probe_attached")
            )
        })
        .to_owned()
}

/// Runs of the retransmit programs the kernel skipped and counted (a
/// kprobe or tracepoint program is skipped while the CPU runs another).
fn missed_runs(s: &Scrape) -> f64 {
    s.series("sonde_bpf_program_missed_runs_total", &[])
        .into_iter()
        .filter(|x| {
            x.label("program")
                .is_some_and(|p| p.starts_with("sonde_tcp_retransmit"))
        })
        .map(|x| x.value)
        .sum()
}

/// N connects to a listener across the link: Sonde's connect-latency
/// histogram for that peer rises by exactly N (and the machine-wide one by
/// at least N), with no failure.
#[test]
fn connects_are_counted_exactly_per_peer() {
    if !require_root() {
        return;
    }
    const N: usize = 20;
    let link = Link::new();
    let agent = Agent::start(&Config::new().render(), &[]);
    let (_listener, at) = listen(&link, 40300);
    let all = |s: &Scrape| s.value_or_zero("sonde_tcp_connect_duration_seconds_count", &[]);
    let failures =
        |s: &Scrape| s.value_or_zero("sonde_peer_tcp_connect_failures_total", &peer(SERVER_IP));
    let before = agent.metrics();
    connect_n(Some(&link.client), &at, N);
    let after = settled(&agent, "connects to the peer", &before, N as f64, connects);
    let d = connects(&after) - connects(&before);
    let d_all = all(&after) - all(&before);
    println!("measured: peer {SERVER_IP} connects +{d} of {N}, all connects +{d_all}");
    assert_eq!(
        d,
        N as f64,
        "{N} connects to {at}: sonde_peer_tcp_connect_duration_seconds_count{{peer=\"{SERVER_IP}\"}} \
         rose by {d}:\n{}",
        after.grep("sonde_peer_tcp_connect")
    );
    assert!(
        d_all >= N as f64,
        "sonde_tcp_connect_duration_seconds_count rose by {d_all}, fewer than the {N} connects"
    );
    assert_eq!(
        failures(&after) - failures(&before),
        0.0,
        "no connect failed"
    );
}

/// IPv6 peers: N connects to a listener on the host's `::1` are counted
/// under the peer `::1` (the address the raw and fentry tiers read from
/// `sock_common.skc_v6_daddr`, the classic tier from the record).
#[test]
fn ipv6_connects_are_counted_per_peer() {
    if !require_root() {
        return;
    }
    const N: usize = 20;
    const AT: &str = "[::1]:40320";
    let agent = Agent::start(&Config::new().render(), &[]);
    let mut listener = Workload::spawn(&["tcp-listen", AT, "300"]);
    listener.expect_line("ready", Duration::from_secs(10));
    let v6 = |s: &Scrape| peer_connects(s, "::1");
    let before = agent.metrics();
    connect_n(None, AT, N);
    let after = settled(&agent, "IPv6 connects", &before, N as f64, v6);
    let d = v6(&after) - v6(&before);
    println!("measured: peer ::1 connects +{d} of {N}");
    assert_eq!(
        d,
        N as f64,
        "{N} connects to {AT}: sonde_peer_tcp_connect_duration_seconds_count{{peer=\"::1\"}} \
         rose by {d}:\n{}",
        after.grep("sonde_peer_tcp_connect")
    );
}

/// Every packet across the link delayed by DELAY_MS each way (netem): N
/// handshakes (on the kprobe and tracepoint tiers, but for runs the kernel
/// skipped, as the retransmit test allows) all land above 67 ms in the
/// peer's connect-latency histogram,
/// and the smoothed RTTs of connections across it (both ends') average
/// above 67 ms, as do the machine-wide histogram's new slow samples. Without
/// netem, iptables drops each handshake's first SYN instead (a ≥ 1 s
/// handshake); the RTT part needs a delay on every packet and is skipped,
/// saying so.
#[test]
fn delayed_handshakes_and_rtts_move_past_the_delay() {
    if !require_root() {
        return;
    }
    const N: usize = 10;
    let link = Link::new();
    let agent = Agent::start(&tcp_only().render(), &[]);
    let (_listener, at) = listen(&link, 40310);
    let port = at.rsplit(':').next().unwrap_or_default();
    let how = link.impair(
        &format!("delay {DELAY_MS}ms"),
        &[(
            Side::Server,
            format!(
                "INPUT -p tcp --syn --dport {port} -m statistic --mode nth --every 2 --packet 0 \
                 -j DROP"
            ),
        )],
    );
    let rtt_count = |s: &Scrape| link_sum(s, "sonde_peer_tcp_rtt_seconds_count");
    let rtt_sum = |s: &Scrape| link_sum(s, "sonde_peer_tcp_rtt_seconds_sum");
    let slow_rtts = |s: &Scrape| {
        s.value_or_zero("sonde_tcp_rtt_seconds_count", &[])
            - s.value_or_zero("sonde_tcp_rtt_seconds_bucket", &[("le", FAST_LE)])
    };
    let before = agent.metrics();
    connect_n(Some(&link.client), &at, N);
    let after = settled(&agent, "connects to the peer", &before, N as f64, connects);
    let d = connects(&after) - connects(&before);
    let d_fast = fast_connects(&after) - fast_connects(&before);
    println!("measured: {how}: peer {SERVER_IP} connects +{d} of {N}, ≤ 67 ms +{d_fast}");
    // Exact, but for runs of the state program the kernel skipped and
    // counted (recursion misses: under emulation a softirq's program can
    // land on a CPU already running one). On the kprobe and classic
    // tracepoint tiers, as for retransmits below, also by at most
    // max(1, 10 %) it skipped without counting: before 6.7 the kernel
    // counts none of their skips (one connect of ten went so on 6.1's
    // kprobe tier in CI).
    let skipped = missed_state_runs(&after) - missed_state_runs(&before);
    let tier = retransmit_tier(&after);
    let uncounted = match tier.as_str() {
        "kprobe" | "tracepoint" => (N as f64 * 0.1).max(1.0),
        _ => 0.0,
    };
    assert!(
        d <= N as f64 && d + skipped + uncounted >= N as f64,
        "{N} connects under {how} ({tier} tier): the peer's connect-latency count rose by \
         {d} (runs of the state program the kernel skipped: +{skipped}; uncounted skips \
         allowed: {uncounted}):\n{}",
        after.grep("sonde_peer_tcp_connect")
    );
    if let Impairment::Neither(why) = &how {
        println!("measured: delay not checked: {why}");
        eprintln!("SKIPPED the delay part: {why}");
        return;
    }
    assert_eq!(
        d_fast,
        0.0,
        "every handshake under {how} takes > 67 ms, yet {d_fast} landed at or under it:\n{}",
        after.grep("sonde_peer_tcp_connect")
    );
    match &how {
        Impairment::Netem => {
            // A connection that carries data: both ends process ACKs while
            // established, so both take RTT samples.
            let sink = format!("{SERVER_IP}:40311");
            let mut sink_w = Workload::spawn_in(&link.server, &["tcp-sink", &sink, "300"]);
            sink_w.expect_line("ready", Duration::from_secs(10));
            Workload::run_in(
                &link.client,
                &["tcp-send", &sink, "10", "100", "0"],
                scaled(Duration::from_secs(60)),
            );
            let after = settled(
                &agent,
                "RTT samples across the link",
                &after,
                1.0,
                rtt_count,
            );
            link.clear();
            let n = rtt_count(&after) - rtt_count(&before);
            let mean = (rtt_sum(&after) - rtt_sum(&before)) / n;
            let slow = slow_rtts(&after) - slow_rtts(&before);
            println!(
                "measured: RTT samples across the link +{n}, mean {:.0} ms; machine-wide > 67 ms +{slow}",
                mean * 1e3
            );
            assert!(
                n >= 1.0,
                "no RTT sample across the link:\n{}",
                after.grep("rtt")
            );
            assert!(
                mean > 0.067,
                "a {DELAY_MS} ms delay each way: the link's smoothed RTTs average {mean} s"
            );
            assert!(
                slow >= 1.0,
                "sonde_tcp_rtt_seconds above 67 ms rose by {slow}:\n{}",
                after.grep("sonde_tcp_rtt")
            );
        }
        Impairment::Iptables(no_netem) => {
            let why = format!(
                "RTT not checked: no sch_netem ({no_netem}), and iptables can drop but not delay"
            );
            println!("measured: {why}");
            eprintln!("SKIPPED the RTT part: {why}");
        }
        Impairment::Neither(_) => unreachable!("returned above"),
    }
}

/// An established connection across the link sends 50 segments while
/// LOSS_PCT % of the packets each way are lost (netem, else iptables drops
/// on arrival); the loss ends and both close. Lost segments are retransmitted
/// (by timeout, fast retransmit or tail-loss probe), each one segment (the
/// 64 KiB MTU), so Sonde's retransmits for the two peers must equal the two
/// kernels' RetransSegs. On the kprobe and tracepoint tiers the kernel skips
/// a program while the CPU already runs such a program (a timer softirq on
/// the way out of an interrupt that came during one): there the count may
/// fall short by the runs the kernel skipped and counted, and beyond those
/// by at most max(1, 10 %).
#[test]
fn retransmits_under_loss_match_the_kernels_retranssegs() {
    if !require_root() {
        return;
    }
    let link = Link::new();
    let agent = Agent::start(&Config::new().render(), &[]);
    let at = format!("{SERVER_IP}:40320");
    let mut sink = Workload::spawn_in(&link.server, &["tcp-sink", &at, "300"]);
    sink.expect_line("ready", Duration::from_secs(10));
    let ours = |s: &Scrape| link_sum(s, "sonde_peer_tcp_retransmits_total");
    let before = agent.metrics();
    let tier = retransmit_tier(&before);
    let k0 = link.kernel_retrans_segs();
    let mut sender = Workload::spawn_in(
        &link.client,
        &["tcp-send", &at, LOSS_MESSAGES, "1000", "1000"],
    );
    sender.expect_line("connected", scaled(Duration::from_secs(10)));
    // iptables drops on arrival, as a lossy wire would (a packet dropped
    // on its way out would fail the local send instead).
    let random_drop = |dev| {
        format!(
            "INPUT -i {dev} -m statistic --mode random --probability {} -j DROP",
            LOSS_PCT as f64 / 100.0
        )
    };
    let how = link.impair(
        &format!("loss {LOSS_PCT}%"),
        &[
            (Side::Server, random_drop(SERVER_IF)),
            (Side::Client, random_drop(CLIENT_IF)),
        ],
    );
    if let Impairment::Neither(why) = &how {
        println!("measured: loss not injected, retransmits not checked: {why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    // The loss ends once the last message is written: the close that
    // follows could otherwise lose its FIN and the peer's until the backed-
    // off timers outlast the sender's wait (seen on 6.1 under emulation).
    sender.expect_line("written", scaled(Duration::from_secs(60)));
    link.clear();
    sender.wait_success(scaled(Duration::from_secs(120)));
    drop(sink);
    // A segment lost several times is retransmitted seconds after the loss
    // is gone (the timer backs off): wait until no socket is left in a state
    // that retransmits, then read the kernels, Sonde, and the kernels
    // again, until they agree they stood still.
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(60));
    while link.unsettled_sockets() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sockets across the link still closing after 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (after, k1) = loop {
        let k = link.kernel_retrans_segs();
        let s = agent.wait_stable(
            "the link's retransmits",
            scaled(Duration::from_secs(20)),
            SPACING,
            |s| (ours(s), missed_runs(s)),
        );
        if link.kernel_retrans_segs() == k {
            break (s, k);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kernels kept retransmitting"
        );
    };
    let d = ours(&after) - ours(&before);
    let kernel = k1 - k0;
    let missed = missed_runs(&after) - missed_runs(&before);
    println!(
        "measured: {tier} tier, {how}: retransmits +{d}, kernel RetransSegs +{kernel}, \
         skipped runs +{missed}"
    );
    assert!(
        kernel >= 1.0,
        "{LOSS_PCT} % loss on {LOSS_MESSAGES} segments, yet the kernels retransmitted nothing"
    );
    assert!(
        d >= 1.0 && d <= kernel,
        "Sonde counted {d} retransmits for the link's peers, the kernels {kernel}:\n{}",
        after.grep("retransmit")
    );
    let shortfall = kernel - (d + missed);
    let allowed = match tier.as_str() {
        "fentry" | "fexit" => 0.0,
        _ => (kernel * 0.1).max(1.0),
    };
    assert!(
        shortfall <= allowed,
        "{tier} tier: Sonde counted {d} retransmits (+{missed} skipped runs), the kernels \
         {kernel}: short by {shortfall}, more than the {allowed} allowed"
    );
}
