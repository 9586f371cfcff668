//! Packet accounting shared types: per-(interface, direction, family,
//! protocol) counters with TCP flag counts, and the flow table.

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
}

/// A flow: 5-tuple plus interface and direction. Addresses are 16 bytes;
/// IPv4 addresses occupy the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub ifindex: u32,
    pub direction: u8,
    pub family: u8,
    pub protocol: u8,
    pub _pad: u8,
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
    /// bpf_ktime_get_ns() of the latest packet.
    pub last_seen_ns: u64,
}
