//! Crash leftovers: an agent SIGKILLed under traffic leaves its netlink TC
//! filters attached (the kernel does not detach them with the process);
//! the next start removes them — exactly one set of Sonde's programs is
//! attached afterwards, the counts are exact against the interface's own
//! counters — and another owner's TC filter and XDP program on the same
//! interface are untouched. A start that finds another live Sonde in the
//! namespace (its lock held) leaves that one's filters alone.
//!
//! On kernels with tcx (6.6+) the agent is forced onto the netlink path
//! (`[network] tc_attach = "netlink"`) so the leftover case happens here
//! too; the kernel matrix runs it on 6.1, where netlink is the default.

use std::time::Duration;

use sonde_tests::{
    Agent, Config, LAB_HOST_IP, LAB_IF, Lab, Scrape, Workload,
    agent::scaled,
    bpf::{BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, Pinned},
    net::iface_stat,
    require_root,
    sys::{cmd, must},
};

const SEND_TIMEOUT: Duration = Duration::from_secs(60);
const SPACING: Duration = Duration::from_millis(500);
/// The foreign programs' kernel names (15 characters at most).
const FOREIGN_TC: &str = "foreign_tc";
const FOREIGN_XDP: &str = "foreign_xdp";

/// The filter lines (those with a handle) on the lab interface's hook.
fn filters(direction: &str) -> Vec<String> {
    must(&mut cmd(
        "tc",
        &["filter", "show", "dev", LAB_IF, direction],
    ))
    .lines()
    .filter(|l| l.contains(" handle "))
    .map(str::to_owned)
    .collect()
}

/// Filters whose BPF program's kernel name starts with `prefix`.
fn count(lines: &[String], prefix: &str) -> usize {
    lines
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "name")
                .nth(1)
                .is_some_and(|n| n.starts_with(prefix))
        })
        .count()
}

/// The XDP program attached to the lab interface: (id, `ip -d link` line).
fn xdp_program() -> Option<(String, String)> {
    let out = must(&mut cmd("ip", &["-d", "link", "show", "dev", LAB_IF]));
    let line = out.lines().find(|l| l.contains("prog/xdp"))?.trim();
    let id = line
        .split_whitespace()
        .skip_while(|w| *w != "id")
        .nth(1)?
        .to_owned();
    Some((id, line.to_owned()))
}

fn all_packets(s: &Scrape, direction: &str) -> f64 {
    s.sum(
        "sonde_packets_total",
        &[("interface", LAB_IF), ("direction", direction)],
    )
}

fn config(lock_dir: &std::path::Path) -> Config {
    Config::new()
        .network_on(&[LAB_IF])
        .set("network", "xdp_mode", "\"off\"")
        .set("network", "tc_attach", "\"netlink\"")
        .set(
            "network",
            "lock_dir",
            &format!("{:?}", lock_dir.display().to_string()),
        )
}

fn start(config: &Config) -> Agent {
    Agent::start(&config.render(), &["--interface", LAB_IF])
}

/// What is on the lab interface, for failure messages.
fn hooks() -> String {
    format!(
        "ingress filters:\n{}\negress filters:\n{}\nxdp: {:?}",
        filters("ingress").join("\n"),
        filters("egress").join("\n"),
        xdp_program()
    )
}

/// Sonde's filters on both hooks: (ingress, egress).
fn sonde_filters() -> (usize, usize) {
    (
        count(&filters("ingress"), "sonde_"),
        count(&filters("egress"), "sonde_"),
    )
}

#[test]
fn a_killed_agents_filters_are_removed_at_restart_and_no_others() {
    if !require_root() {
        return;
    }
    let (ns, _veth) = Lab::network();
    let lock_dir = tempfile_dir();

    // Another owner's programs: a cls_bpf filter on each TC hook and a
    // generic XDP program, attached the way iproute2 users do.
    let pinned = Pinned::new().expect("a private bpffs for the foreign programs");
    let tc_pin = pinned
        .load(BPF_PROG_TYPE_SCHED_CLS, FOREIGN_TC, -1, "tc")
        .expect("loading the foreign TC program");
    let xdp_pin = pinned
        .load(BPF_PROG_TYPE_XDP, FOREIGN_XDP, 2, "xdp")
        .expect("loading the foreign XDP program");
    let tc_pin = tc_pin.to_str().unwrap();
    must(&mut cmd("tc", &["qdisc", "add", "dev", LAB_IF, "clsact"]));
    for direction in ["ingress", "egress"] {
        must(&mut cmd(
            "tc",
            &[
                "filter", "add", "dev", LAB_IF, direction, "prio", "7", "bpf", "da", "pinned",
                tc_pin,
            ],
        ));
    }
    must(&mut cmd(
        "ip",
        &[
            "link",
            "set",
            "dev",
            LAB_IF,
            "xdpgeneric",
            "pinned",
            xdp_pin.to_str().unwrap(),
        ],
    ));
    let (foreign_xdp, line) = xdp_program().expect("the foreign XDP program attached");
    assert!(line.contains(FOREIGN_XDP), "{line}");

    let config = config(&lock_dir);
    let port = 40140;
    let sink_addr = format!("{LAB_HOST_IP}:{port}");
    let mut sink = Workload::spawn(&["udp-sink", &sink_addr, "120"]);
    sink.expect_line("ready", Duration::from_secs(10));

    // 1. An agent, killed under traffic: its netlink filters stay.
    let mut first = start(&config);
    assert_eq!(sonde_filters(), (1, 1), "{}", hooks());
    // A flood bounded in time; the kill lands once the agent counts it.
    let flood = Workload::spawn_in(&ns, &["udp-flood", &sink_addr, "3", "100"]);
    first.wait_for(
        "the flood's packets counted",
        scaled(Duration::from_secs(10)),
        |s| all_packets(s, "ingress") > 100.0,
    );
    first.signal(libc::SIGKILL);
    first
        .wait_exit(Duration::from_secs(10))
        .expect("the agent dies on SIGKILL");
    flood.wait_success(scaled(SEND_TIMEOUT));
    assert_eq!(
        sonde_filters(),
        (1, 1),
        "a SIGKILLed agent's netlink filters stay attached (the case this test is about):\n{}",
        hooks()
    );

    // 2. The restart removes them: one set of Sonde's filters, the foreign
    // ones untouched.
    let second = start(&config);
    let (ingress, egress) = sonde_filters();
    assert_eq!(
        (ingress, egress),
        (1, 1),
        "after a restart exactly one set of Sonde's filters:\n{}",
        hooks()
    );
    assert_eq!(count(&filters("ingress"), FOREIGN_TC), 1, "{}", hooks());
    assert_eq!(count(&filters("egress"), FOREIGN_TC), 1, "{}", hooks());
    assert_eq!(
        xdp_program().map(|(id, _)| id),
        Some(foreign_xdp.clone()),
        "the foreign XDP program stays:\n{}",
        hooks()
    );
    let s = second.metrics();
    for kind in ["tc_ingress", "tc_egress"] {
        assert_eq!(
            s.value_or_zero("sonde_leftover_programs_removed_total", &[("kind", kind)]),
            1.0,
            "{}",
            s.grep("sonde_leftover")
        );
    }
    assert!(
        second
            .log()
            .contains("removed a TC filter a previous Sonde left attached"),
        "{}",
        second.log_tail(30)
    );

    // 3. The counts are exact: one set counts each packet once.
    let n: u64 = 5000;
    let before = second.wait_stable(
        "ingress packets before",
        Duration::from_secs(10),
        SPACING,
        |s| all_packets(s, "ingress"),
    );
    let rx_before = iface_stat(LAB_IF, "rx_packets");
    Workload::run_in(
        &ns,
        &["udp-send", &sink_addr, &n.to_string(), "100"],
        scaled(SEND_TIMEOUT),
    );
    let after = second.wait_stable(
        "ingress packets after",
        Duration::from_secs(10),
        SPACING,
        |s| all_packets(s, "ingress"),
    );
    let rx = iface_stat(LAB_IF, "rx_packets") - rx_before;
    let seen = all_packets(&after, "ingress") - all_packets(&before, "ingress");
    assert!(rx >= n, "rx_packets rose by {rx} for {n} datagrams");
    assert_eq!(
        seen, rx as f64,
        "the restarted agent saw {seen} ingress packets, the interface received {rx}"
    );

    // 4. A second agent while this one lives: the lock tells it another
    // Sonde owns the filters, and it leaves them (network off: it would
    // otherwise attach a set of its own).
    let other = Agent::start(
        &Config::new()
            .set(
                "network",
                "lock_dir",
                &format!("{:?}", lock_dir.display().to_string()),
            )
            .render(),
        &[],
    );
    assert!(
        other
            .log()
            .contains("another live Sonde runs in this network namespace"),
        "{}",
        other.log_tail(30)
    );
    assert_eq!(sonde_filters(), (1, 1), "{}", hooks());
    other.stop().expect("the second agent stops");

    // 5. A clean stop detaches Sonde's filters and nothing else.
    second.stop().expect("the agent stops on SIGTERM");
    assert_eq!(sonde_filters(), (0, 0), "{}", hooks());
    assert_eq!(count(&filters("ingress"), FOREIGN_TC), 1, "{}", hooks());
    assert_eq!(
        xdp_program().map(|(id, _)| id),
        Some(foreign_xdp),
        "{}",
        hooks()
    );
    drop(sink);
    let _ = std::fs::remove_dir_all(&lock_dir);
    println!(
        "measured: after SIGKILL 1+1 Sonde filters left, after restart 1+1 (leftovers removed: \
         1 ingress, 1 egress); ingress +{seen} packets for rx_packets +{rx} ({n} sent); foreign \
         tc and xdp untouched"
    );
}

/// A fresh directory for the agents' lock (removed at the end).
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sonde-test-lock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
