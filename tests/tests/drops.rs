//! Packet drops by the kernel's own reason: datagrams dropped by a
//! firewall rule the test installs in the peer's namespace are counted
//! under `netfilter_drop`, the name the running kernel gives that reason,
//! and, exactly, under the interface and namespace they arrived in; once
//! that namespace is deleted, its series is removed (a node's pods come
//! and go: their drop series must not pile up).

use std::time::Duration;

use sonde_tests::{Config, LAB_PEER_IP, Lab, Scrape, Workload, net::snmp_field, require_root, sys};

#[test]
fn firewall_drops_are_counted_with_their_reason() {
    if !require_root() {
        return;
    }
    const N: f64 = 500.0;
    let lab = Lab::start(Config::new());
    let port = "40300";
    let status = lab
        .ns
        .exec(&[
            "iptables", "-A", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP",
        ])
        .status()
        .expect("running iptables in the test namespace");
    assert!(status.success(), "iptables failed in the test namespace");
    let drops =
        |s: &Scrape| s.value_or_zero("sonde_packet_drops_total", &[("reason", "netfilter_drop")]);
    let netns = lab.ns.inode().to_string();
    let device_labels = [
        ("netns", netns.as_str()),
        ("interface", lab.veth.peer()),
        ("reason", "netfilter_drop"),
    ];
    let device_drops =
        |s: &Scrape| s.value_or_zero("sonde_interface_packet_drops_total", &device_labels);
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
    let labels = [
        ("netns", netns.as_str()),
        ("interface", lab.veth.peer()),
        ("reason", "no_socket"),
    ];
    let device_drops = |s: &Scrape| s.value_or_zero("sonde_interface_packet_drops_total", &labels);
    let (before, kernel_before) = (lab.agent.metrics(), no_ports());
    Workload::run(
        &["udp-send", &format!("{LAB_PEER_IP}:40301"), "500", "64"],
        Duration::from_secs(60),
    );
    let kernel = no_ports() - kernel_before;
    assert_eq!(kernel, N, "the namespace's Udp NoPorts rose by {kernel}");
    let after = lab
        .agent
        .try_wait_for(Duration::from_secs(5), |s| {
            device_drops(s) - device_drops(&before) >= kernel
        })
        .unwrap_or_else(|last| last);
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
