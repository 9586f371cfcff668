//! Packet accounting shared types: per-(interface, direction, family,
//! protocol) counters with TCP flag and ICMPv6 link-control counts, and
//! the flow table.

/// `PerCpuHashMap<PacketKey, PacketCounters>`.
pub const PACKET_COUNTERS_MAP: &str = "PACKET_COUNTERS";
/// `LruHashMap<FlowKey, FlowStats>` (shared; updated with atomic adds).
pub const FLOWS_MAP: &str = "FLOWS";

/// Bound on distinct packet-counter keys.
pub const MAX_PACKET_KEYS: u32 = 4096;
/// Default bound on the flow table (user space may resize it at load).
pub const DEFAULT_MAX_FLOWS: u32 = 65536;

pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

pub const FAMILY_OTHER: u8 = 0;
pub const FAMILY_IPV4: u8 = 1;
pub const FAMILY_IPV6: u8 = 2;
pub const FAMILY_ARP: u8 = 3;

/// `protocol` value for packets without an IP protocol (ARP, other L3).
pub const PROTO_NONE: u8 = 255;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_SCTP: u8 = 132;

/// The address a key holds in 16 bytes (IPv4 in the first 4 when `family`
/// is `FAMILY_IPV4`).
#[cfg(feature = "user")]
pub fn ip_addr(family: u8, addr: [u8; 16]) -> core::net::IpAddr {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    }
}

/// The `direction` label of a `DIRECTION_*` value.
#[cfg(feature = "user")]
pub fn direction_name(direction: u8) -> &'static str {
    if direction == DIRECTION_EGRESS {
        "egress"
    } else {
        "ingress"
    }
}

/// The `family` label of a `FAMILY_*` value.
#[cfg(feature = "user")]
pub fn family_name(family: u8) -> &'static str {
    match family {
        FAMILY_IPV4 => "ipv4",
        FAMILY_IPV6 => "ipv6",
        FAMILY_ARP => "arp",
        _ => "other",
    }
}

/// The `protocol` label of an IP protocol number ("none" outside IPv4
/// and IPv6, or for `PROTO_NONE`).
#[cfg(feature = "user")]
pub fn protocol_name(family: u8, protocol: u8) -> &'static str {
    if family != FAMILY_IPV4 && family != FAMILY_IPV6 {
        return "none";
    }
    match protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        IPPROTO_SCTP => "sctp",
        IPPROTO_GRE => "gre",
        IPPROTO_ESP => "esp",
        PROTO_NONE => "none",
        _ => "other",
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PacketKey {
    pub ifindex: u32,
    /// `DIRECTION_*`.
    pub direction: u8,
    /// `FAMILY_*`.
    pub family: u8,
    /// IP protocol number, or `PROTO_NONE`.
    pub protocol: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PacketCounters {
    pub packets: u64,
    /// L2 frame bytes (what the interface statistics count).
    pub bytes: u64,
    /// SYN without ACK.
    pub tcp_syn: u64,
    pub tcp_synack: u64,
    pub tcp_rst: u64,
    pub tcp_fin: u64,
    /// ICMPv6 link control ([`is_icmpv6_link_control`]).
    pub icmpv6_link_control: u64,
    /// Fragments of IP datagrams, the first included: IPv4 packets with
    /// More Fragments set or a fragment offset, IPv6 packets with a
    /// Fragment header. What the kernel's `Ip: ReasmReqds` counts of
    /// what it receives.
    pub ip_fragments: u64,
}

/// Whether an ICMPv6 message of `icmp_type` is link control: multicast
/// listener discovery (130–132, 143), router and neighbour discovery and
/// redirects (133–137), inverse ND (141, 142), SEND (148, 149), multicast
/// router discovery (151–153). Hosts send these by themselves whenever an
/// interface comes up or an address is added (duplicate address detection
/// from `::`, listener reports), so a burst of pods starting makes a burst
/// of them: link upkeep, not an ICMP flood.
pub const fn is_icmpv6_link_control(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=137 | 141..=143 | 148 | 149 | 151..=153)
}

/// [`FlowKey::flags`]: the flow's packets are fragments of datagrams
/// ([`PacketCounters::ip_fragments`]). A non-first fragment carries no
/// transport header, so its ports (ICMP type and code) are 0: without
/// the mark, fragments would share a flow with real port-0 traffic
/// (ICMP echo replies), and a fragment flood would not be told apart.
pub const FLOW_FRAGMENTS: u8 = 1;

/// A flow: 5-tuple plus interface and direction. Addresses are 16 bytes;
/// IPv4 addresses occupy the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub ifindex: u32,
    pub direction: u8,
    pub family: u8,
    pub protocol: u8,
    /// `FLOW_*` marks.
    pub flags: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    /// bpf_ktime_get_ns() of the flow's first packet; with the key, it
    /// identifies one incarnation of a flow (evicted and re-created flows
    /// get a new one).
    pub first_seen_ns: u64,
    // No time of the latest packet: reading the clock on every packet cost
    // a helper call each; user space sees a flow go idle when its counts
    // stop moving between reads.
}

/// `HashMap<BlocklistKey, BlocklistEntry>`: sources whose packets the
/// ingress programs drop (MAPE-K enforce mode). Written by user space only;
/// the kernel adds to the entries' counters.
pub const BLOCKLIST_MAP: &str = "BLOCKLIST";
/// `PerCpuArray<BlocklistStats>`, one slot: every packet dropped for the
/// blocklist, whatever entry it matched (entries come and go; this only
/// grows).
pub const BLOCKLIST_STATS_MAP: &str = "BLOCKLIST_STATS";
/// Bound on blocked sources (user space holds far fewer: `[mapek] max_blocked`).
pub const MAX_BLOCKLIST: u32 = 1024;

/// A blocked source address, stored like the flow key's: 16 bytes in
/// network order, an IPv4 address in the first 4 and the rest zero. The
/// family keeps 1.2.3.4 apart from the IPv6 address 102:304::.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlocklistKey {
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlocklistEntry {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) at which the block ends: from
    /// then on the source's packets pass, whether or not user space has
    /// removed the entry yet.
    pub expires_ns: u64,
    /// Packets dropped for this entry (atomic adds: every CPU shares it).
    pub packets: u64,
    /// Their L2 frame bytes.
    pub bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlocklistStats {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
impl From<core::net::IpAddr> for BlocklistKey {
    fn from(ip: core::net::IpAddr) -> Self {
        let mut key = BlocklistKey::default();
        match ip.to_canonical() {
            core::net::IpAddr::V4(v4) => {
                key.family = FAMILY_IPV4;
                key.addr[..4].copy_from_slice(&v4.octets());
            }
            core::net::IpAddr::V6(v6) => {
                key.family = FAMILY_IPV6;
                key.addr = v6.octets();
            }
        }
        key
    }
}

#[cfg(feature = "user")]
impl BlocklistKey {
    /// The address, or None for a key of no IP family.
    pub fn ip(&self) -> Option<core::net::IpAddr> {
        let a = self.addr;
        match self.family {
            FAMILY_IPV4 => Some(core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()),
            FAMILY_IPV6 => Some(core::net::Ipv6Addr::from(a).into()),
            _ => None,
        }
    }
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    #[test]
    fn blocklist_keys_hold_addresses_like_flow_keys() {
        let v4: core::net::IpAddr = "10.213.0.2".parse().unwrap();
        let key = BlocklistKey::from(v4);
        assert_eq!(key.family, FAMILY_IPV4);
        assert_eq!(
            key.addr,
            [10, 213, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(key.ip(), Some(v4));
        // An IPv4-mapped IPv6 address arrives on the wire as IPv4.
        let mapped: core::net::IpAddr = "::ffff:10.213.0.2".parse().unwrap();
        assert_eq!(BlocklistKey::from(mapped), key);
        let v6: core::net::IpAddr = "fd00::2".parse().unwrap();
        let key = BlocklistKey::from(v6);
        assert_eq!(key.family, FAMILY_IPV6);
        assert_eq!(key.ip(), Some(v6));
        assert_eq!(core::mem::size_of::<BlocklistKey>(), 20);
    }

    #[test]
    fn label_names() {
        assert_eq!(direction_name(DIRECTION_EGRESS), "egress");
        assert_eq!(direction_name(DIRECTION_INGRESS), "ingress");
        assert_eq!(family_name(FAMILY_ARP), "arp");
        assert_eq!(family_name(FAMILY_OTHER), "other");
        assert_eq!(protocol_name(FAMILY_IPV6, IPPROTO_ICMPV6), "icmpv6");
        // Echo, errors and node information are not link control.
        for t in [1, 2, 3, 4, 128, 129, 139, 140] {
            assert!(!is_icmpv6_link_control(t), "type {t}");
        }
        // Listener reports, RS, RA, NS, NA, redirect, MLDv2 report.
        for t in [130, 131, 132, 133, 134, 135, 136, 137, 143] {
            assert!(is_icmpv6_link_control(t), "type {t}");
        }
        assert_eq!(protocol_name(FAMILY_IPV4, IPPROTO_SCTP), "sctp");
        assert_eq!(protocol_name(FAMILY_IPV4, 99), "other");
        assert_eq!(protocol_name(FAMILY_ARP, IPPROTO_TCP), "none");
    }
}
