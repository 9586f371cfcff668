//! TCP lifecycle: handshake latency (SYN_SENT → ESTABLISHED), failed
//! handshakes, passive opens, state transitions, retransmits, resets sent
//! and received, smoothed-RTT samples, and the same per remote peer for
//! the most active peers (kernel side: agent-ebpf's tcp module; types in
//! agent-common's `tcp`). `[tcp] enabled` turns it on, `[tcp] hook`
//! forces a tier, `[tcp] rtt` (a runtime switch in the config map) the
//! RTT programs' counting, `[tcp] top_peers` how many peers are exported.
//!
//! Four tiers count the same numbers; the cheapest this kernel offers is
//! attached: fentry (BTF trampolines), raw tracepoints, kprobes, then the
//! classic `sock` and `tcp` tracepoints (kernel side: why raw tracepoints
//! beat kprobes). The kernel's own listen-queue counters (TcpExt
//! ListenOverflows and ListenDrops in /proc/net/netstat) are read with
//! them, whether or not the programs are attached: they need none.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use agent_common::{
    config::CFG_TCP_RTT,
    counters::TCP_CONNECT_MAP_FULL,
    merge::Merge,
    tcp::{
        PEER_FAMILY_IPV4, TCP_PEERS_MAP, TCP_STATE_NAMES, TCP_STATES, TCP_STATS_MAP,
        TCP_TRANSITIONS_MAP, TcpPeerKey, TcpPeerStats, TcpStats,
    },
};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray},
};
use prometheus::proto::{MetricFamily, MetricType};

use super::{BtfField, OpenError, Reading, Signal, Source, TracepointField, take};
use crate::{
    map_batch,
    config::{Config, TcpHook},
    family::{Family, log2_buckets},
    probes::tiers::{self, Hook, Requires, Tier, TierProgram, program},
};

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: TRACEPOINT_FIELDS,
    btf_fields: BTF_FIELDS,
    symbols: &[],
    constants: &[],
    enabled: |config| config.tcp.enabled,
    forced_tier: |config| match config.tcp.hook {
        TcpHook::Auto => None,
        TcpHook::Fentry => Some("fentry"),
        TcpHook::RawTracepoint => Some("raw_tracepoint"),
        TcpHook::Kprobe => Some("kprobe"),
        TcpHook::Tracepoint => Some("tracepoint"),
    },
    reads: "TCP statistics",
    open,
};

/// What the `tcp_send_reset` tracepoint (classic or raw) misses before
/// Linux 6.10 (19822a980e19 made it fire without a socket).
const SEND_RESET_PARTIAL: Option<((u8, u8), &str)> = Some((
    (6, 10),
    "resets sent without a socket (a SYN to a closed port, a stray segment) are not \
     seen: the tcp_send_reset tracepoint fires for them from Linux 6.10",
));

/// fentry, raw tracepoint, kprobe, tracepoint: the same numbers, cheapest
/// first.
const TIERS: tiers::Signal = tiers::Signal {
    name: "tcp",
    required: false,
    tiers: &[
        Tier {
            mode: "fentry",
            min_kernel: (5, 5),
            requires: Requires::Trampolines,
            programs: &[
                TierProgram {
                    program: "sonde_tcp_state_fentry",
                    hook: Hook::Fentry("tcp_set_state"),
                    needs: &["SK_STATE_OFFSET"],
                    partial_before: None,
                },
                // Retransmissions sent: tcp_retransmit_skb's entry and exit
                // and __tcp_retransmit_skb's exit (tail-loss probes call it
                // directly; some kernels inline it into tcp_retransmit_skb),
                // each counted once (agent-ebpf/src/tcp.rs).
                program(
                    "sonde_tcp_retransmit_fentry",
                    Hook::Fentry("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_fexit",
                    Hook::Fexit("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_inner_fexit",
                    Hook::Fexit("__tcp_retransmit_skb"),
                ),
                program("sonde_tcp_receive_reset_fentry", Hook::Fentry("tcp_reset")),
                program(
                    "sonde_tcp_send_reset_fentry",
                    Hook::Fentry("tcp_v4_send_reset"),
                ),
                program(
                    "sonde_tcp_send_active_reset_fentry",
                    Hook::Fentry("tcp_send_active_reset"),
                ),
                TierProgram {
                    program: "sonde_tcp_rtt_fentry",
                    hook: Hook::Fentry("tcp_rcv_established"),
                    needs: &["TCP_SRTT_OFFSET"],
                    partial_before: None,
                },
            ],
        },
        Tier {
            mode: "raw_tracepoint",
            min_kernel: (4, 17),
            requires: Requires::RawTracepointsAndBtf,
            programs: &[
                TierProgram {
                    program: "sonde_tcp_state_raw",
                    hook: Hook::RawTracepoint("inet_sock_set_state"),
                    needs: &["SK_PROTOCOL_OFFSET"],
                    partial_before: None,
                },
                program(
                    "sonde_tcp_retransmit_raw",
                    Hook::RawTracepoint("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_receive_reset_raw",
                    Hook::RawTracepoint("tcp_receive_reset"),
                ),
                TierProgram {
                    partial_before: SEND_RESET_PARTIAL,
                    ..program(
                        "sonde_tcp_send_reset_raw",
                        Hook::RawTracepoint("tcp_send_reset"),
                    )
                },
                TierProgram {
                    program: "sonde_tcp_rtt_raw",
                    hook: Hook::RawTracepoint("tcp_probe"),
                    needs: &["TCP_SRTT_OFFSET"],
                    partial_before: None,
                },
            ],
        },
        Tier {
            mode: "kprobe",
            min_kernel: (4, 1),
            requires: Requires::Kprobes,
            programs: &[
                TierProgram {
                    program: "sonde_tcp_state_kprobe",
                    hook: Hook::Kprobe("tcp_set_state"),
                    needs: &["SK_STATE_OFFSET"],
                    partial_before: None,
                },
                // The same two functions, each retransmission counted once,
                // at its return and only if it was sent.
                program(
                    "sonde_tcp_retransmit_kprobe",
                    Hook::Kprobe("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_kretprobe",
                    Hook::Kretprobe("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_inner_kprobe",
                    Hook::Kprobe("__tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_inner_kretprobe",
                    Hook::Kretprobe("__tcp_retransmit_skb"),
                ),
                program("sonde_tcp_receive_reset_kprobe", Hook::Kprobe("tcp_reset")),
                program(
                    "sonde_tcp_send_reset_kprobe",
                    Hook::Kprobe("tcp_v4_send_reset"),
                ),
                program(
                    "sonde_tcp_send_reset_kprobe",
                    Hook::Kprobe("tcp_send_active_reset"),
                ),
                TierProgram {
                    program: "sonde_tcp_rtt_kprobe",
                    hook: Hook::Kprobe("tcp_rcv_established"),
                    needs: &["TCP_SRTT_OFFSET"],
                    partial_before: None,
                },
            ],
        },
        Tier {
            mode: "tracepoint",
            min_kernel: (4, 16),
            requires: Requires::Tracefs,
            programs: &[
                TierProgram {
                    program: "sonde_tcp_state",
                    hook: Hook::Tracepoint("sock", "inet_sock_set_state"),
                    needs: &[
                        "TP_SSS_SKADDR",
                        "TP_SSS_OLDSTATE",
                        "TP_SSS_NEWSTATE",
                        "TP_SSS_PROTOCOL",
                    ],
                    partial_before: None,
                },
                program(
                    "sonde_tcp_retransmit",
                    Hook::Tracepoint("tcp", "tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_receive_reset",
                    Hook::Tracepoint("tcp", "tcp_receive_reset"),
                ),
                TierProgram {
                    partial_before: SEND_RESET_PARTIAL,
                    ..program(
                        "sonde_tcp_send_reset",
                        Hook::Tracepoint("tcp", "tcp_send_reset"),
                    )
                },
                TierProgram {
                    program: "sonde_tcp_probe",
                    hook: Hook::Tracepoint("tcp", "tcp_probe"),
                    needs: &["TP_PROBE_SRTT"],
                    partial_before: None,
                },
            ],
        },
    ],
};

/// The tracepoint tier's record fields. The peer's address fields are not
/// required: without them a program counts totals and no peer.
const TRACEPOINT_FIELDS: &[TracepointField] = &[
    ("TP_SSS_FAMILY", "sock", "inet_sock_set_state", "family"),
    ("TP_SSS_DADDR", "sock", "inet_sock_set_state", "daddr"),
    ("TP_SSS_DADDR_V6", "sock", "inet_sock_set_state", "daddr_v6"),
    ("TP_RETX_FAMILY", "tcp", "tcp_retransmit_skb", "family"),
    ("TP_RETX_DADDR", "tcp", "tcp_retransmit_skb", "daddr"),
    ("TP_RETX_DADDR_V6", "tcp", "tcp_retransmit_skb", "daddr_v6"),
    ("TP_PROBE_DADDR", "tcp", "tcp_probe", "daddr"),
    ("TP_SSS_SKADDR", "sock", "inet_sock_set_state", "skaddr"),
    ("TP_SSS_OLDSTATE", "sock", "inet_sock_set_state", "oldstate"),
    ("TP_SSS_NEWSTATE", "sock", "inet_sock_set_state", "newstate"),
    ("TP_SSS_PROTOCOL", "sock", "inet_sock_set_state", "protocol"),
    ("TP_PROBE_SRTT", "tcp", "tcp_probe", "srtt"),
];

/// The fentry, raw tracepoint and kprobe tiers' struct members: the
/// socket's state and protocol, its smoothed RTT and its peer's address.
const BTF_FIELDS: &[BtfField] = &[
    ("SK_STATE_OFFSET", "sock_common", &["skc_state"]),
    ("SK_PROTOCOL_OFFSET", "sock", &["sk_protocol"]),
    ("TCP_SRTT_OFFSET", "tcp_sock", &["srtt_us"]),
    ("SK_FAMILY_OFFSET", "sock_common", &["skc_family"]),
    ("SK_DADDR_OFFSET", "sock_common", &["skc_daddr"]),
    ("SK_V6_DADDR_OFFSET", "sock_common", &["skc_v6_daddr"]),
];

fn open(ebpf: &mut Ebpf, config: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Maps {
        stats: take(ebpf, TCP_STATS_MAP)?,
        transitions: take(ebpf, TCP_TRANSITIONS_MAP)?,
        peers: take(ebpf, TCP_PEERS_MAP)?,
        top_peers: config.tcp.top_peers,
    }))
}

struct Maps {
    stats: PerCpuArray<MapData, TcpStats>,
    transitions: PerCpuArray<MapData, u64>,
    peers: HashMap<MapData, TcpPeerKey, TcpPeerStats>,
    /// `[tcp] top_peers`: the peers exported.
    top_peers: usize,
}

impl Maps {
    fn read(&self, tcp: &mut Tcp) -> Result<(), MapError> {
        tcp.stats = TcpStats::sum(self.stats.get(&0, 0)?.iter());
        let transitions = map_batch::per_cpu_array_summed(&self.transitions)?;
        let states = (TCP_STATES * TCP_STATES) as usize;
        for (index, n) in (0..).zip(transitions.into_iter().take(states)) {
            if n > 0 {
                tcp.transitions
                    .push((index / TCP_STATES, index % TCP_STATES, n));
            }
        }
        Ok(())
    }

    /// The `top_peers` most active peers of the kernel's peer table.
    fn read_peers(&self) -> Vec<(IpAddr, TcpPeerStats)> {
        let mut peers: Vec<(IpAddr, TcpPeerStats)> = self
            .peers
            .iter()
            .filter_map(Result::ok)
            .map(|(key, stats)| {
                let addr = if key.family == PEER_FAMILY_IPV4 {
                    IpAddr::V4(Ipv4Addr::new(
                        key.addr[0],
                        key.addr[1],
                        key.addr[2],
                        key.addr[3],
                    ))
                } else {
                    IpAddr::V6(Ipv6Addr::from(key.addr))
                };
                (addr, stats)
            })
            .collect();
        let activity = |s: &TcpPeerStats| s.connects + s.connect_failures + s.retransmits;
        peers.sort_by(|a, b| activity(&b.1).cmp(&activity(&a.1)).then(a.0.cmp(&b.0)));
        peers.truncate(self.top_peers);
        peers
    }
}

impl Source for Maps {
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        let mut tcp = Tcp {
            listen: std::fs::read_to_string("/proc/net/netstat")
                .ok()
                .and_then(|text| read_listen_counters(&text)),
            peers: self.read_peers(),
            ..Default::default()
        };
        let error = self.read(&mut tcp).err();
        (Arc::new(tcp), error)
    }

    fn reconfigure(&mut self, config: &Config) -> Result<Vec<(u32, u64)>, OpenError> {
        self.top_peers = config.tcp.top_peers;
        Ok(vec![(
            CFG_TCP_RTT,
            u64::from(config.tcp.enabled && config.tcp.rtt),
        )])
    }
}

/// Accept-queue overflows: SYNs and handshake-completing ACKs a listener
/// dropped because its accept queue was full (`ListenOverflows`), and all
/// drops on listeners, overflows included (`ListenDrops`). The kernel keeps
/// no drop reason for the SYNs it refuses this way, so these come from its
/// SNMP counters, not from `skb:kfree_skb`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ListenCounters {
    pub overflows: u64,
    pub drops: u64,
}

/// Reads `TcpExt: ListenOverflows ListenDrops` from /proc/net/netstat.
pub fn read_listen_counters(netstat: &str) -> Option<ListenCounters> {
    let tcp_ext = crate::netstat::Group::parse(netstat, "TcpExt:")?;
    Some(ListenCounters {
        overflows: tcp_ext.get("ListenOverflows")?,
        drops: tcp_ext.get("ListenDrops")?,
    })
}

/// TCP totals summed over CPUs, the transitions seen, the most active
/// peers and the kernel's listen-queue counters.
#[derive(Debug, Clone, Default)]
pub struct Tcp {
    /// Lifecycle totals, summed over CPUs.
    pub stats: TcpStats,
    /// (old state, new state, transitions), non-zero only.
    pub transitions: Vec<(u32, u32, u64)>,
    /// The kernel's own listen-queue counters for this network namespace
    /// (TcpExt ListenOverflows, ListenDrops), where it exposes them.
    pub listen: Option<ListenCounters>,
    /// The most active TCP peers (passive mesh view).
    pub peers: Vec<(IpAddr, TcpPeerStats)>,
}

impl Reading for Tcp {
    fn families(&self, out: &mut Vec<MetricFamily>) {
        let tcp = &self.stats;
        let mut connect = Family::new(
            "sonde_tcp_connect_duration_seconds",
            "Active TCP opens: SYN sent to ESTABLISHED",
            MetricType::HISTOGRAM,
        );
        connect.histogram(
            &[],
            &log2_buckets(&tcp.connect_latency_slots),
            tcp.connects,
            tcp.connect_latency_sum_ns as f64 / 1e9,
        );
        connect.done(out);
        let mut rtt = Family::new(
            "sonde_tcp_rtt_seconds",
            "Smoothed round-trip time samples of established TCP connections (one per ACK processed)",
            MetricType::HISTOGRAM,
        );
        rtt.histogram(
            &[],
            &log2_buckets(&tcp.rtt_slots),
            tcp.rtt_samples,
            tcp.rtt_sum_us as f64 / 1e6,
        );
        rtt.done(out);
        for (name, help, value) in [
            (
                "sonde_tcp_connect_failures_total",
                "Active TCP opens that failed (SYN_SENT to CLOSE: refused, unreachable, timed out)",
                tcp.connect_failures,
            ),
            (
                "sonde_tcp_accepts_total",
                "Passive TCP opens (SYN_RECV to ESTABLISHED)",
                tcp.accepts,
            ),
            (
                "sonde_tcp_retransmits_total",
                "TCP segments retransmitted",
                tcp.retransmits,
            ),
        ] {
            let mut f = Family::new(name, help, MetricType::COUNTER);
            f.sample(&[], value as f64);
            f.done(out);
        }
        if let Some(listen) = self.listen {
            for (name, help, value) in [
                (
                    "sonde_tcp_listen_overflows_total",
                    "Connections refused because a listener's accept queue was full (the kernel's TcpExt ListenOverflows, in the agent's network namespace)",
                    listen.overflows,
                ),
                (
                    "sonde_tcp_listen_drops_total",
                    "SYNs and handshake ACKs dropped on listeners, overflows included (the kernel's TcpExt ListenDrops, in the agent's network namespace)",
                    listen.drops,
                ),
            ] {
                let mut f = Family::new(name, help, MetricType::COUNTER);
                f.sample(&[], value as f64);
                f.done(out);
            }
        }
        let mut resets = Family::new(
            "sonde_tcp_resets_total",
            "TCP resets, by direction (sent, received)",
            MetricType::COUNTER,
        );
        resets.sample(&[("direction", "sent")], tcp.resets_sent as f64);
        resets.sample(&[("direction", "received")], tcp.resets_received as f64);
        resets.done(out);
        let mut transitions = Family::new(
            "sonde_tcp_state_transitions_total",
            "TCP socket state changes, by old and new state",
            MetricType::COUNTER,
        );
        let name = |state: u32| {
            TCP_STATE_NAMES
                .get(state as usize)
                .copied()
                .unwrap_or("unknown")
        };
        for &(from, to, n) in &self.transitions {
            transitions.sample(&[("from", name(from)), ("to", name(to))], n as f64);
        }
        transitions.done(out);

        let mut peer_connect = Family::new(
            "sonde_peer_tcp_connect_duration_seconds",
            "TCP handshake latency to the most active remote peers (passive mesh view)",
            MetricType::HISTOGRAM,
        );
        let mut peer_failures = Family::new(
            "sonde_peer_tcp_connect_failures_total",
            "Failed TCP handshakes to the most active remote peers",
            MetricType::COUNTER,
        );
        let mut peer_retransmits = Family::new(
            "sonde_peer_tcp_retransmits_total",
            "TCP retransmissions to the most active remote peers",
            MetricType::COUNTER,
        );
        let mut peer_rtt = Family::new(
            "sonde_peer_tcp_rtt_seconds",
            "Smoothed RTT samples to the most active remote peers (summary: _sum / _count is the mean)",
            MetricType::SUMMARY,
        );
        for (addr, stats) in &self.peers {
            let peer = addr.to_string();
            let labels = [("peer", peer.as_str())];
            peer_connect.histogram(
                &labels,
                &log2_buckets(&stats.connect_latency_slots),
                stats.connects,
                stats.connect_latency_sum_ns as f64 / 1e9,
            );
            peer_failures.sample(&labels, stats.connect_failures as f64);
            peer_retransmits.sample(&labels, stats.retransmits as f64);
            peer_rtt.summary(&labels, stats.rtt_samples, stats.rtt_sum_us as f64 / 1e6);
        }
        peer_connect.done(out);
        peer_failures.done(out);
        peer_retransmits.done(out);
        peer_rtt.done(out);
    }

    /// Handshakes timed against those lost because the in-flight connect
    /// map was full.
    fn completeness(&self) -> Option<(u64, u32)> {
        Some((
            self.stats.connects + self.stats.connect_failures,
            TCP_CONNECT_MAP_FULL,
        ))
    }

    fn completeness_signal(&self) -> Option<&'static str> {
        Some("tcp_connect")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_counters_come_from_the_tcpext_lines() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                       TcpExt: 0 56 57 9\n\
                       IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            read_listen_counters(netstat),
            Some(ListenCounters {
                overflows: 56,
                drops: 57
            })
        );
        assert_eq!(read_listen_counters("IpExt: A\nIpExt: 1\n"), None);
    }

    #[test]
    fn families_from_totals_transitions_and_peers() {
        let reading = Tcp {
            stats: TcpStats {
                connects: 3,
                connect_failures: 1,
                resets_sent: 2,
                ..Default::default()
            },
            transitions: vec![(2, 1, 3)],
            listen: None,
            peers: vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), TcpPeerStats::default())],
        };
        let mut out = Vec::new();
        reading.families(&mut out);
        let names: Vec<&str> = out.iter().map(|f| f.name()).collect();
        assert!(names.contains(&"sonde_tcp_state_transitions_total"));
        assert!(names.contains(&"sonde_peer_tcp_rtt_seconds"));
        assert!(
            !names.contains(&"sonde_tcp_listen_overflows_total"),
            "no netstat, no listen counters"
        );
        assert_eq!(reading.completeness(), Some((4, TCP_CONNECT_MAP_FULL)));
        assert_eq!(reading.completeness_signal(), Some("tcp_connect"));
    }
}
