//! TCP listen-queue overflows by listening port: connections a listener
//! refused because its accept queue was full (kernel side: agent-ebpf's
//! drops module, `sonde_listen_overflow` (`_raw`) on skb:kfree_skb; map names in
//! agent-common's `drops`). `[tcp] listen_overflows` turns it on.
//!
//! What it sees: the segment completing a handshake (the client's ACK, or
//! its first data under TCP_DEFER_ACCEPT) that found the accept queue
//! full, which the kernel frees with reason TCP_LISTEN_OVERFLOW. A SYN
//! that arrives while the queue is already full is also an overflow to
//! the kernel (`TcpExtListenOverflows`), but is freed without a reason
//! (up to 6.18 at least) and is not counted here: the unlabelled
//! `sonde_tcp_listen_overflows_total`, read from /proc/net/netstat, has
//! both; this family says which ports. Bounded: 1024 ports per node
//! (summed over network namespaces); beyond them, `port="other"`, always
//! exported (0 when none) so a dashboard tells "none" from "off".

use std::sync::Arc;

use agent_common::drops::{LISTEN_OVERFLOWS_MAP, LISTEN_OVERFLOWS_OTHER_MAP};
use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use prometheus::proto::{MetricFamily, MetricType};

use super::{OpenError, Reading, Signal, Source, take};
use crate::{
    map_batch,
    config::Config,
    family::Family,
    probes::tiers::{self, Hook, Requires, Tier, TierProgram},
};

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: &[
        ("TP_KFREE_SKB_REASON", "skb", "kfree_skb", "reason"),
        ("TP_KFREE_SKB_SKBADDR", "skb", "kfree_skb", "skbaddr"),
    ],
    btf_fields: &[
        ("SKB_HEAD_OFFSET", "sk_buff", &["head"]),
        ("SKB_TRANSPORT_HEADER_OFFSET", "sk_buff", &["transport_header"]),
    ],
    symbols: &[(
        "DROP_REASON_LISTEN_OVERFLOW",
        "skb",
        "kfree_skb",
        "reason",
        "TCP_LISTEN_OVERFLOW",
    )],
    constants: &[],
    enabled: |config| config.tcp.listen_overflows,
    forced_tier: |_| None,
    reads: "TCP listen overflows",
    open,
};

/// Drop reasons came with 5.17: the raw tracepoint's arguments there
/// (`kfree_skb(skb, location, reason, ...)`), else the skb:kfree_skb
/// record; kernels whose format has no TCP_LISTEN_OVERFLOW leave it
/// unattached, saying so.
const TIERS: tiers::Signal = tiers::Signal {
    name: "listen_overflows",
    required: false,
    tiers: &[
        Tier {
            mode: "raw_tracepoint",
            min_kernel: (5, 17),
            requires: Requires::RawTracepointsAndBtf,
            programs: &[TierProgram {
                program: "sonde_listen_overflow_raw",
                hook: Hook::RawTracepoint("kfree_skb"),
                needs: &[
                    "TP_KFREE_SKB_REASON",
                    "DROP_REASON_LISTEN_OVERFLOW",
                    "SKB_HEAD_OFFSET",
                    "SKB_TRANSPORT_HEADER_OFFSET",
                ],
                partial_before: None,
            }],
        },
        Tier {
            mode: "tracepoint",
            min_kernel: (5, 17),
            requires: Requires::Tracefs,
            programs: &[TierProgram {
                program: "sonde_listen_overflow",
                hook: Hook::Tracepoint("skb", "kfree_skb"),
                needs: &[
                    "TP_KFREE_SKB_REASON",
                    "TP_KFREE_SKB_SKBADDR",
                    "DROP_REASON_LISTEN_OVERFLOW",
                    "SKB_HEAD_OFFSET",
                    "SKB_TRANSPORT_HEADER_OFFSET",
                ],
                partial_before: None,
            }],
        },
    ],
};

fn open(ebpf: &mut Ebpf, _: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Maps {
        ports: take(ebpf, LISTEN_OVERFLOWS_MAP)?,
        other: take(ebpf, LISTEN_OVERFLOWS_OTHER_MAP)?,
    }))
}

struct Maps {
    ports: PerCpuHashMap<MapData, u32, u64>,
    other: PerCpuArray<MapData, u64>,
}

impl Source for Maps {
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        let mut reading = ListenOverflows::default();
        match self.other.get(&0, 0) {
            Ok(values) => reading.other = values.iter().sum(),
            Err(err) => return (Arc::new(reading), Some(err)),
        }
        match map_batch::per_cpu_hash_summed(&self.ports) {
            Ok(ports) => reading.ports = ports,
            Err(err) => return (Arc::new(reading), Some(err)),
        }
        reading.ports.sort_unstable();
        (Arc::new(reading), None)
    }
}

/// Overflows by listening port, summed over CPUs, and those beyond the
/// ports tracked.
#[derive(Debug, Clone, Default)]
pub struct ListenOverflows {
    pub ports: Vec<(u32, u64)>,
    pub other: u64,
}

impl Reading for ListenOverflows {
    fn families(&self, out: &mut Vec<MetricFamily>) {
        let mut overflows = Family::new(
            "sonde_tcp_listen_overflow_drops_total",
            "Segments completing a TCP handshake that a listener dropped because its \
             accept queue was full (drop reason TCP_LISTEN_OVERFLOW), by listening port; \
             SYNs refused on a full queue are not seen (sonde_tcp_listen_overflows_total \
             counts both, without port). port=\"other\": beyond 1024 ports",
            MetricType::COUNTER,
        );
        for (port, n) in &self.ports {
            overflows.sample(&[("port", &port.to_string())], *n as f64);
        }
        overflows.sample(&[("port", "other")], self.other as f64);
        overflows.done(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_per_port_and_one_for_the_rest() {
        let reading = ListenOverflows {
            ports: vec![(80, 3), (8080, 1)],
            other: 0,
        };
        let mut out = Vec::new();
        reading.families(&mut out);
        assert_eq!(out.len(), 1);
        let ports: Vec<(&str, f64)> = out[0]
            .get_metric()
            .iter()
            .map(|m| (m.get_label()[0].value(), m.get_counter().value()))
            .collect();
        assert_eq!(ports, [("80", 3.0), ("8080", 1.0), ("other", 0.0)]);
    }
}
