//! Monitor: turns two consecutive collector snapshots into one feature
//! vector of per-second rates and ratios. A feature whose signal is missing
//! (not attached on this kernel) is left out, never faked as zero.

use std::{collections::BTreeMap, net::IpAddr};

use crate::collectors::Snapshot;

/// Feature name → value for one cycle.
pub type Features = BTreeMap<&'static str, f64>;

/// What the cycle's evidence names, when it names something.
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    /// The peer that opened flows to the most distinct local ports.
    pub widest_peer: Option<IpAddr>,
}

/// Rates between `prev` and `now`; None until two snapshots exist.
pub fn features(
    prev: &Snapshot,
    now: &Snapshot,
    signals: &Signals,
) -> Option<(Features, Subjects)> {
    let dt = now.seconds_since(prev)?;
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
    let mut f = Features::new();

    if signals.syscalls {
        let total = |s: &Snapshot| s.syscalls.iter().map(|r| r.stats.count).sum::<u64>();
        let errors = |s: &Snapshot| s.syscalls.iter().map(|r| r.stats.errors).sum::<u64>();
        let calls = rate(total(prev), total(now));
        let failed = rate(errors(prev), errors(now));
        f.insert("syscalls_per_second", calls);
        f.insert("syscall_errors_per_second", failed);
    }
    if signals.network {
        let syn_in = |s: &Snapshot| {
            s.packets
                .iter()
                .filter(|(k, _)| k.direction == agent_common::net::DIRECTION_INGRESS)
                .map(|(_, c)| c.tcp_syn)
                .sum::<u64>()
        };
        f.insert("ingress_syn_per_second", rate(syn_in(prev), syn_in(now)));
        let fan_out = now.widest_peer.map_or(0, |(_, n)| n);
        f.insert("peer_ports_per_cycle", fan_out as f64);
    }
    if signals.tcp {
        f.insert(
            "tcp_accepts_per_second",
            rate(prev.tcp.accepts, now.tcp.accepts),
        );
        f.insert(
            "tcp_retransmits_per_second",
            rate(prev.tcp.retransmits, now.tcp.retransmits),
        );
        f.insert(
            "tcp_resets_sent_per_second",
            rate(prev.tcp.resets_sent, now.tcp.resets_sent),
        );
    }
    if signals.drops {
        let drops = |s: &Snapshot| s.drops.iter().map(|(_, n)| *n).sum::<u64>();
        f.insert("packet_drops_per_second", rate(drops(prev), drops(now)));
    }
    if signals.runqueue {
        let samples = now.runqueue.samples.saturating_sub(prev.runqueue.samples);
        if samples > 0 {
            let sum = now.runqueue.sum_ns.saturating_sub(prev.runqueue.sum_ns);
            f.insert(
                "runqueue_mean_wait_seconds",
                sum as f64 / samples as f64 / 1e9,
            );
        }
    }
    let subjects = Subjects {
        widest_peer: now.widest_peer.map(|(peer, _)| peer),
    };
    Some((f, subjects))
}

/// Which signals are attached (so missing ones are skipped).
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    pub syscalls: bool,
    pub network: bool,
    pub tcp: bool,
    pub drops: bool,
    pub runqueue: bool,
}
