//! Packet drops by the kernel's own reason: datagrams dropped by a
//! firewall rule the test installs in the peer's namespace are counted
//! under `netfilter_drop`, the name the running kernel gives that reason,
//! and, exactly, under the interface and namespace they arrived in; once
//! that namespace is deleted, its series is removed (a node's pods come
//! and go: their drop series must not pile up). A flood of drops is
//! counted by interface one in N while it lasts, and by reason exactly,
//! against the firewall rule's own counter.

use std::time::Duration;

use sonde_tests::{Config, LAB_PEER_IP, Lab, Scrape, Workload, net::snmp_field, require_root, sys};

/// Drops the UDP datagrams to `port` that reach the test namespace (an
/// iptables INPUT rule there, gone with the namespace).
fn drop_udp_to(lab: &Lab, port: &str) {
    lab.ns
        .iptables(&["-A", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP"]);
}

/// `sonde_packet_drops_total` of reason `netfilter_drop` (the rule's).
fn netfilter_drops(s: &Scrape) -> f64 {
    s.value_or_zero("sonde_packet_drops_total", &[("reason", "netfilter_drop")])
}

/// `sonde_interface_packet_drops_total` of `reason` on the namespace's
/// end of the lab's veth (`netns`: the namespace's inode).
fn drops_on_peer_end(s: &Scrape, lab: &Lab, netns: &str, reason: &str) -> f64 {
    s.value_or_zero(
        "sonde_interface_packet_drops_total",
        &[
            ("netns", netns),
            ("interface", lab.veth.peer()),
            ("reason", reason),
        ],
    )
}

/// Scrapes until `count` has risen by `expected` since `before`, for at
/// most 5 s (a cycle is 200 ms); the last scrape either way, for the
/// caller's exact assertion.
fn once_risen(lab: &Lab, before: &Scrape, count: impl Fn(&Scrape) -> f64, expected: f64) -> Scrape {
    lab.agent
        .try_wait_for(Duration::from_secs(5), |s| {
            count(s) - count(before) >= expected
        })
        .unwrap_or_else(|last| last)
}

#[test]
fn firewall_drops_are_counted_with_their_reason() {
    if !require_root() {
        return;
    }
    const N: f64 = 500.0;
    let lab = Lab::start(Config::new());
    let port = "40300";
    drop_udp_to(&lab, port);
    let drops = netfilter_drops;
    let netns = lab.ns.inode().to_string();
    let device_drops = |s: &Scrape| drops_on_peer_end(s, &lab, &netns, "netfilter_drop");
    let before = lab.agent.metrics();
    Workload::run(
        &["udp-send", &format!("{LAB_PEER_IP}:{port}"), "500", "64"],
        Duration::from_secs(60),
    );
    let after = lab
        .agent
        .try_wait_for(Duration::from_secs(5), |s| {
            drops(s) - drops(&before) >= N && device_drops(s) - device_drops(&before) >= N
        })
        .unwrap_or_else(|last| {
            panic!(
                "{N} datagrams dropped by an iptables DROP rule: \
                 sonde_packet_drops_total{{reason=\"netfilter_drop\"}} rose by {}, \
                 on {} in namespace {netns} by {}:\n{}",
                drops(&last) - drops(&before),
                lab.veth.peer(),
                device_drops(&last) - device_drops(&before),
                last.grep("drops_total")
            )
        });
    // Only the test's datagrams match the rule, and all arrive on the peer.
    assert_eq!(
        device_drops(&after) - device_drops(&before),
        N,
        "drops on {} in namespace {netns}:\n{}",
        lab.veth.peer(),
        after.grep("sonde_interface_packet_drops_total")
    );

    // The namespace goes (a pod ends): within a sweep (60 cycles of 200 ms)
    // its series leaves /metrics and the kernel map.
    let removed_before = after.value_or_zero("sonde_interface_drop_series_removed_total", &[]);
    let status = std::process::Command::new("ip")
        .args(["netns", "del", lab.ns.name()])
        .status()
        .expect("running ip netns del");
    assert!(status.success(), "ip netns del {} failed", lab.ns.name());
    let gone = lab
        .agent
        .try_wait_for(Duration::from_secs(30), |s| {
            s.series(
                "sonde_interface_packet_drops_total",
                &[("netns", netns.as_str())],
            )
            .is_empty()
        })
        .unwrap_or_else(|last| {
            panic!(
                "namespace {netns} was deleted 30 s ago; its drop series are still exported:\n{}",
                last.grep("drops")
            )
        });
    let removed = gone.value_or_zero("sonde_interface_drop_series_removed_total", &[]);
    assert!(
        removed > removed_before,
        "sonde_interface_drop_series_removed_total stayed at {removed} while namespace \
         {netns}'s series went away"
    );

    println!(
        "netfilter_drop +{}; reasons seen: {}",
        drops(&after) - drops(&before),
        after
            .series("sonde_packet_drops_total", &[])
            .iter()
            .filter_map(|s| s.label("reason"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Datagrams to a port nobody listens on are freed with reason
/// NO_SOCKET: counted under the interface and namespace they arrived in,
/// exactly as many as the namespace's own `Udp: NoPorts` counts. Needs no
/// firewall, so the kernel matrix (whose guests have no iptables) runs
/// it on each kernel's own drop hook.
#[test]
fn datagrams_to_a_closed_port_are_counted_as_the_kernel_counts_them() {
    if !require_root() {
        return;
    }
    const N: f64 = 500.0;
    let lab = Lab::start(Config::new());
    let no_ports = || {
        let snmp = sys::must(&mut lab.ns.exec(&["cat", "/proc/net/snmp"]));
        snmp_field(&snmp, "Udp:", "NoPorts")
            .unwrap_or_else(|| panic!("no Udp: NoPorts in /proc/net/snmp:\n{snmp}"))
    };
    let netns = lab.ns.inode().to_string();
    let device_drops = |s: &Scrape| drops_on_peer_end(s, &lab, &netns, "no_socket");
    let (before, kernel_before) = (lab.agent.metrics(), no_ports());
    Workload::run(
        &["udp-send", &format!("{LAB_PEER_IP}:40301"), "500", "64"],
        Duration::from_secs(60),
    );
    let kernel = no_ports() - kernel_before;
    assert_eq!(kernel, N, "the namespace's Udp NoPorts rose by {kernel}");
    let after = once_risen(&lab, &before, device_drops, kernel);
    assert_eq!(
        device_drops(&after) - device_drops(&before),
        kernel,
        "no_socket drops on {} in namespace {netns}, against the kernel's NoPorts:\n{}",
        lab.veth.peer(),
        after.grep("sonde_interface_packet_drops_total")
    );
    println!(
        "no_socket drops on {} +{kernel}, Udp NoPorts +{kernel}",
        lab.veth.peer()
    );
}

/// The packets the test namespace's INPUT rule for UDP port `port` has
/// matched, from iptables' own counter (`-x`: exact, not rounded to K/M).
fn rule_packets(lab: &Lab, port: &str) -> f64 {
    let listing = sys::must(&mut lab.ns.exec(&["iptables", "-L", "INPUT", "-n", "-v", "-x"]));
    let needle = format!("dpt:{port}");
    listing
        .lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter for {needle} in:\n{listing}"))
}

/// A flood of drops far past `[drops] exact_device_drops_per_second`
/// (10,000/s by default): while it lasts one drop in N is counted by
/// interface, N times, and `sonde_interface_drops_sample_period` says N;
/// the count by reason stays exact to the packet against the firewall
/// rule's own counter, the estimate by interface within 5% of it. Once
/// drops are few again the period is back at 1, and a burst after it is
/// counted by interface exactly.
#[test]
fn a_flood_of_drops_is_sampled_by_interface_and_exact_by_reason() {
    if !require_root() {
        return;
    }
    let lab = Lab::start(Config::new());
    let port = "40302";
    drop_udp_to(&lab, port);
    let to = format!("{LAB_PEER_IP}:{port}");
    let reason_drops = netfilter_drops;
    let netns = lab.ns.inode().to_string();
    let device_drops = |s: &Scrape| drops_on_peer_end(s, &lab, &netns, "netfilter_drop");
    let period = |s: &Scrape| s.value_or_zero("sonde_interface_drops_sample_period", &[]);

    let before = lab.agent.metrics();
    assert_eq!(
        period(&before),
        1.0,
        "no drops yet, yet sampled:\n{}",
        before.grep("drops")
    );
    let rule_before = rule_packets(&lab, port);
    let flood = Workload::spawn(&["udp-flood", &to, "4", "64"]);
    // The highest period seen while the flood lasts.
    let mut highest = 0.0f64;
    let last = lab
        .agent
        .try_wait_for(Duration::from_millis(3500), |s| {
            highest = highest.max(period(s));
            false
        })
        .unwrap_or_else(|last| last);
    flood.wait_success(Duration::from_secs(30));
    let flooded = rule_packets(&lab, port) - rule_before;
    assert!(
        highest > 1.0,
        "{flooded} datagrams dropped in 4 s ({:.0}/s), yet the count by interface stayed \
         exact (sonde_interface_drops_sample_period {highest}):\n{}",
        flooded / 4.0,
        last.grep("drops")
    );
    let after = once_risen(&lab, &before, reason_drops, flooded);
    let by_reason = reason_drops(&after) - reason_drops(&before);
    let by_device = device_drops(&after) - device_drops(&before);
    assert_eq!(
        by_reason,
        flooded,
        "netfilter_drop by reason against the rule's counter (sampled by interface at \
         one in {highest}):\n{}",
        after.grep("drops")
    );
    let error = (by_device - flooded).abs() / flooded;
    assert!(
        error <= 0.05,
        "estimated drops on {} {by_device} against the rule's {flooded} ({:.1}% off, \
         sampled at up to one in {highest}):\n{}",
        lab.veth.peer(),
        error * 100.0,
        after.grep("drops")
    );

    // Drops are few again: exact by interface.
    let calm = lab
        .agent
        .try_wait_for(Duration::from_secs(5), |s| period(s) == 1.0)
        .unwrap_or_else(|last| {
            panic!(
                "the flood ended 5 s ago; the count by interface is still sampled:\n{}",
                last.grep("drops")
            )
        });
    let rule_calm = rule_packets(&lab, port);
    Workload::run(&["udp-send", &to, "500", "64"], Duration::from_secs(60));
    let burst = rule_packets(&lab, port) - rule_calm;
    assert_eq!(
        burst, 500.0,
        "the rule matched {burst} of the 500 datagrams"
    );
    let end = once_risen(&lab, &calm, device_drops, burst);
    assert_eq!(
        device_drops(&end) - device_drops(&calm),
        burst,
        "after the flood, drops on {} against the rule's counter:\n{}",
        lab.veth.peer(),
        end.grep("drops")
    );
    assert_eq!(
        period(&end),
        1.0,
        "500 drops set the period to {}",
        period(&end)
    );
    println!(
        "flood: {flooded} dropped ({:.0}/s), by reason +{by_reason}, by interface \
         +{by_device} ({:+.2}%), sampled at up to one in {highest}; burst after: \
         {burst} exact",
        flooded / 4.0,
        (by_device - flooded) / flooded * 100.0
    );
}
