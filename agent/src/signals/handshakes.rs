//! Peers that proved their address is real, for MAPE-K's enforce mode:
//! those that completed a TCP handshake with this node or answered one of
//! its own (kernel side: agent-ebpf's handshakes module,
//! `sonde_handshakes` on sock:inet_sock_set_state; types in agent-common's
//! `handshakes`). A forged source address can send SYNs, UDP or ICMP but
//! cannot complete a handshake, so enforce mode blocks only a source found
//! here (recently: see `mapek::guard`), and only for a handshake in the
//! agent's own network namespace: in another one, a process may hold any
//! address (an unprivileged user namespace can make a network namespace,
//! give it an address and connect to itself). Attached when `[mapek] mode` is
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
    handshakes::{HANDSHAKE_PEERS_MAP, HandshakeKey, HandshakePeer},
    tcp::{PEER_FAMILY_IPV4, PEER_FAMILY_IPV6},
};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
};
use prometheus::proto::MetricFamily;

use super::{BtfField, OpenError, Reading, Signal, Source, TracepointField, take};
use crate::{
    config::{Config, Mode},
    probes::tiers::{self, Hook, Requires, Tier, TierProgram},
};

/// The program recording handshakes: attached means proofs are recorded.
pub const PROGRAM: &str = "sonde_handshakes";

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: TRACEPOINT_FIELDS,
    btf_fields: BTF_FIELDS,
    symbols: &[],
    constants: &[],
    enabled: |config| config.mapek.enabled && config.mapek.mode == Mode::Enforce,
    forced_tier: |_| None,
    reads: "handshake proofs",
    open,
};

/// One tier: sock:inet_sock_set_state, whose record carries the family
/// and addresses since 4.16.
const TIERS: tiers::Signal = tiers::Signal {
    name: "handshakes",
    required: false,
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
                "TP_HS_SKADDR",
                "HS_SK_NET_OFFSET",
                "HS_NET_NS_OFFSET",
                "HS_NS_INUM_OFFSET",
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
    ("TP_HS_SKADDR", "sock", "inet_sock_set_state", "skaddr"),
];

/// The socket's network namespace: sock → net → its inode number.
const BTF_FIELDS: &[BtfField] = &[
    ("HS_SK_NET_OFFSET", "sock_common", &["skc_net"]),
    ("HS_NET_NS_OFFSET", "net", &["ns"]),
    ("HS_NS_INUM_OFFSET", "ns_common", &["inum"]),
];

type PeersMap = HashMap<MapData, HandshakeKey, HandshakePeer>;

fn open(ebpf: &mut Ebpf, _: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Maps {
        peers: Arc::new(Mutex::new(take(ebpf, HANDSHAKE_PEERS_MAP)?)),
        netns: own_netns(),
    }))
}

/// The inode number of this process's network namespace (0: unknown, and
/// then no handshake proves anything).
fn own_netns() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino() as u32)
}

struct Maps {
    peers: Arc<Mutex<PeersMap>>,
    netns: u32,
}

impl Source for Maps {
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        (
            Arc::new(Handshakes {
                peers: Some(self.peers.clone()),
                netns: self.netns,
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
    /// Only handshakes in this network namespace (the agent's) count.
    netns: u32,
}

impl fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshakes").finish_non_exhaustive()
    }
}

impl Handshakes {
    /// What the kernel recorded of `peer`'s handshakes in the agent's
    /// network namespace (an IPv4 peer also as the IPv4-mapped IPv6
    /// address a dual-stack socket sees); None: none recorded, or the map
    /// could not be read.
    pub fn proof(&self, peer: IpAddr) -> Option<HandshakePeer> {
        let map = self.peers.as_ref()?;
        let map = map.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Option<HandshakePeer> = None;
        for key in keys(peer, self.netns) {
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

/// The keys the kernel may have recorded `peer` under in `netns`.
fn keys(peer: IpAddr, netns: u32) -> Vec<HandshakeKey> {
    let key = |family, addr| HandshakeKey {
        family,
        netns,
        addr,
    };
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
        let keys = keys("10.213.0.2".parse().unwrap(), 7);
        assert!(keys.iter().all(|k| k.netns == 7));
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].family, PEER_FAMILY_IPV4);
        assert_eq!(keys[0].addr[..4], [10, 213, 0, 2]);
        assert_eq!(keys[1].family, PEER_FAMILY_IPV6);
        assert_eq!(keys[1].addr[10..], [0xff, 0xff, 10, 213, 0, 2]);
        let keys = keys_of("fd00::2");
        assert_eq!(keys.len(), 1);
        assert_eq!(Handshakes::default().proof("fd00::2".parse().unwrap()), None);
    }

    fn keys_of(s: &str) -> Vec<HandshakeKey> {
        keys(s.parse().unwrap(), 7)
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
