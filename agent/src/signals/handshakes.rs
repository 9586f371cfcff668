//! Peers that proved their address is real, for MAPE-K's enforce mode:
//! those that completed a TCP handshake with this node or answered one of
//! its own (kernel side: agent-ebpf's handshakes module,
//! `sonde_handshakes` on sock:inet_sock_set_state; types in agent-common's
//! `handshakes`). A forged source address can send SYNs, UDP or ICMP but
//! cannot complete a handshake, so enforce mode blocks only a source found
//! here (recently: see `mapek::guard`). Attached when `[mapek] mode` is
//! `enforce` at start; no metric families of its own.
//!
//! The map is not copied each cycle (up to 8,192 peers): the reading
//! holds the map and answers for one address when asked, which happens
//! only when an anomaly names a source to block.

use std::{
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use agent_common::{
    handshakes::{HANDSHAKE_PEERS_MAP, HandshakePeer},
    tcp::{PEER_FAMILY_IPV4, PEER_FAMILY_IPV6, TcpPeerKey},
};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
};
use prometheus::proto::MetricFamily;

use super::{OpenError, Reading, Signal, Source, TracepointField, take};
use crate::{
    config::{Config, Mode},
    probes::tiers::{self, Hook, Requires, Tier, TierProgram},
};

/// The program recording handshakes: attached means proofs are recorded.
pub const PROGRAM: &str = "sonde_handshakes";

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: TRACEPOINT_FIELDS,
    btf_fields: &[],
    symbols: &[],
    enabled: |config| config.mapek.enabled && config.mapek.mode == Mode::Enforce,
    forced_tier: |_| None,
    reads: "handshake proofs",
    open,
};

/// One tier: sock:inet_sock_set_state, whose record carries the family
/// and addresses since 4.16.
const TIERS: tiers::Signal = tiers::Signal {
    name: "handshakes",
    tiers: &[Tier {
        mode: "tracepoint",
        min_kernel: (4, 16),
        requires: Requires::Tracefs,
        programs: &[TierProgram {
            program: PROGRAM,
            hook: Hook::Tracepoint("sock", "inet_sock_set_state"),
            needs: &[
                "TP_HS_OLDSTATE",
                "TP_HS_NEWSTATE",
                "TP_HS_PROTOCOL",
                "TP_HS_FAMILY",
                "TP_HS_DADDR",
                "TP_HS_DADDR_V6",
            ],
            partial_before: None,
        }],
    }],
};

const TRACEPOINT_FIELDS: &[TracepointField] = &[
    ("TP_HS_OLDSTATE", "sock", "inet_sock_set_state", "oldstate"),
    ("TP_HS_NEWSTATE", "sock", "inet_sock_set_state", "newstate"),
    ("TP_HS_PROTOCOL", "sock", "inet_sock_set_state", "protocol"),
    ("TP_HS_FAMILY", "sock", "inet_sock_set_state", "family"),
    ("TP_HS_DADDR", "sock", "inet_sock_set_state", "daddr"),
    ("TP_HS_DADDR_V6", "sock", "inet_sock_set_state", "daddr_v6"),
];

type PeersMap = HashMap<MapData, TcpPeerKey, HandshakePeer>;

fn open(ebpf: &mut Ebpf, _: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Maps {
        peers: Arc::new(Mutex::new(take(ebpf, HANDSHAKE_PEERS_MAP)?)),
    }))
}

struct Maps {
    peers: Arc<Mutex<PeersMap>>,
}

impl Source for Maps {
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        (
            Arc::new(Handshakes {
                peers: Some(self.peers.clone()),
            }),
            None,
        )
    }
}

/// The kernel's record of peers that completed handshakes, asked one
/// address at a time.
#[derive(Clone, Default)]
pub struct Handshakes {
    peers: Option<Arc<Mutex<PeersMap>>>,
}

impl fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshakes").finish_non_exhaustive()
    }
}

impl Handshakes {
    /// What the kernel recorded of `peer`'s handshakes (an IPv4 peer also
    /// as the IPv4-mapped IPv6 address a dual-stack socket sees); None:
    /// none recorded, or the map could not be read.
    pub fn proof(&self, peer: IpAddr) -> Option<HandshakePeer> {
        let map = self.peers.as_ref()?;
        let map = map.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Option<HandshakePeer> = None;
        for key in keys(peer) {
            if let Ok(p) = map.get(&key, 0) {
                found = Some(match found {
                    None => p,
                    Some(f) => merge(f, p),
                });
            }
        }
        found
    }
}

/// The keys the kernel may have recorded `peer` under.
fn keys(peer: IpAddr) -> Vec<TcpPeerKey> {
    let key = |family, addr| TcpPeerKey { family, addr };
    match peer.to_canonical() {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            vec![
                key(PEER_FAMILY_IPV4, addr),
                key(PEER_FAMILY_IPV6, v4.to_ipv6_mapped().octets()),
            ]
        }
        IpAddr::V6(v6) => vec![key(PEER_FAMILY_IPV6, v6.octets())],
    }
}

fn merge(a: HandshakePeer, b: HandshakePeer) -> HandshakePeer {
    HandshakePeer {
        passive_ns: a.passive_ns.max(b.passive_ns),
        active_ns: a.active_ns.max(b.active_ns),
        passive: a.passive + b.passive,
        active: a.active + b.active,
    }
}

impl Reading for Handshakes {
    fn families(&self, _: &mut Vec<MetricFamily>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_peer_is_looked_up_as_itself_and_as_mapped() {
        let keys = keys("10.213.0.2".parse().unwrap());
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].family, PEER_FAMILY_IPV4);
        assert_eq!(keys[0].addr[..4], [10, 213, 0, 2]);
        assert_eq!(keys[1].family, PEER_FAMILY_IPV6);
        assert_eq!(keys[1].addr[10..], [0xff, 0xff, 10, 213, 0, 2]);
        let keys = keys_of("fd00::2");
        assert_eq!(keys.len(), 1);
        assert_eq!(Handshakes::default().proof("fd00::2".parse().unwrap()), None);
    }

    fn keys_of(s: &str) -> Vec<TcpPeerKey> {
        keys(s.parse().unwrap())
    }

    #[test]
    fn proofs_under_both_keys_merge() {
        let a = HandshakePeer {
            passive_ns: 5,
            active_ns: 0,
            passive: 2,
            active: 0,
        };
        let b = HandshakePeer {
            passive_ns: 9,
            active_ns: 3,
            passive: 1,
            active: 1,
        };
        assert_eq!(
            merge(a, b),
            HandshakePeer {
                passive_ns: 9,
                active_ns: 3,
                passive: 3,
                active: 1
            }
        );
    }
}
