//! Packet drops by the kernel's own drop reason (`skb:kfree_skb`).

/// `PerCpuArray<u64>` indexed by drop reason (`enum skb_drop_reason`).
pub const DROP_REASONS_MAP: &str = "DROP_REASONS";
/// Reasons tracked by value; larger values (subsystem-specific reasons
/// carry high bits) are counted in the last slot.
pub const MAX_DROP_REASONS: u32 = 512;
/// The slot for reasons outside `0..MAX_DROP_REASONS - 1`.
pub const DROP_REASON_OTHER: u32 = MAX_DROP_REASONS - 1;

/// `PerCpuHashMap<DropDeviceKey, DropDeviceStats>`: drops of packets that
/// still had a network device, by (network namespace, interface, reason).
pub const DROP_DEVICES_MAP: &str = "DROP_DEVICES";
/// Bound on (namespace, interface, reason) combinations; past it a drop is
/// still counted by reason and the overflow in `DROP_DEVICE_MAP_FULL`.
pub const MAX_DROP_DEVICE_KEYS: u32 = 4096;
/// Interface name length (IFNAMSIZ).
pub const IFNAME_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropDeviceKey {
    /// Inode number of the device's network namespace (0: unknown).
    pub netns: u32,
    pub ifindex: u32,
    /// The drop reason slot, as in `DROP_REASONS`.
    pub reason: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropDeviceStats {
    pub drops: u64,
    /// The device's name when the entry was created on this CPU (the
    /// namespace's ifindex can be reused, the name tells them apart).
    pub name: [u8; IFNAME_LEN],
}

/// `LruHashMap<DropPeerKey, u64>` (shared; atomic adds): drops of IP
/// packets by (reason, source, destination), so that an anomaly of packet
/// loss can say whose packets were dropped. Least recently dropped pairs
/// make room; user space reads deltas, never exports them as series.
pub const DROP_PEERS_MAP: &str = "DROP_PEERS";
/// (reason, source, destination) triples remembered.
pub const MAX_DROP_PEER_KEYS: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropPeerKey {
    /// The drop reason slot, as in `DROP_REASONS`.
    pub reason: u32,
    /// `net::FAMILY_IPV4` or `net::FAMILY_IPV6`.
    pub family: u8,
    pub _pad: [u8; 3],
    /// From the dropped packet's IP header; IPv4 in the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// `PerCpuHashMap<u32, u64>`: TCP connections a listener refused because
/// its accept queue was full (`SKB_DROP_REASON_TCP_LISTEN_OVERFLOW`), by
/// listening port (host order).
pub const LISTEN_OVERFLOWS_MAP: &str = "LISTEN_OVERFLOWS";
/// Listening ports tracked; past it an overflow is counted in
/// `LISTEN_OVERFLOWS_OTHER`.
pub const MAX_LISTEN_PORTS: u32 = 1024;
/// `PerCpuArray<u64>` of one slot: overflows on ports beyond
/// `MAX_LISTEN_PORTS`, or whose TCP header could not be read.
pub const LISTEN_OVERFLOWS_OTHER_MAP: &str = "LISTEN_OVERFLOWS_OTHER";
