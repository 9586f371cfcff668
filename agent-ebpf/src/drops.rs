//! Packet drops on `skb:kfree_skb`, counted per CPU by the kernel's drop
//! reason, by (network namespace, interface, reason) when the packet
//! still had a device, and by (reason, source, destination) from its IP
//! header when it had one. The record's field offsets come from this
//! kernel's tracepoint format, the `sk_buff` / `net_device` / `net` member
//! offsets from its BTF; kernels before 5.17 have no reason, and every
//! drop is counted under reason 0 ("unknown"). Since 5.17 the raw
//! tracepoint programs (`_raw`) take the skb and the reason from the
//! tracepoint's arguments instead: no record is built, and no helper call
//! reads them.
//!
//! `sonde_listen_overflow`, on the same tracepoint, counts one reason
//! only, TCP_LISTEN_OVERFLOW (its value from this kernel's format file),
//! by the listening port in the dropped segment's TCP header. A program of
//! its own rather than a branch of `sonde_kfree_skb`, so either can be on
//! without the other; its cost is one extra run per freed-with-a-reason
//! packet (drops only, never consumed packets) that leaves after one
//! 4-byte read of the record unless the reason matches.
//!
//! The count by device is most of a drop's cost (four probe reads and a
//! hash lookup, about 57 of 106 ns): while `CFG_DROP_DEVICE_SAMPLE_PERIOD`
//! is N > 1 (user space sets it only when drops are many), one drop in N,
//! chosen at random, is counted there, N times. The count by reason stays
//! exact.

use agent_common::{
    config::{CFG_DROP_DEVICE_SAMPLE_PERIOD, CFG_DROP_PEERS},
    counters::DROP_DEVICE_MAP_FULL,
    drops::{
        DROP_REASON_OTHER, DropDeviceKey, DropDeviceStats, DropPeerKey, IFNAME_LEN,
        MAX_DROP_DEVICE_KEYS, MAX_DROP_PEER_KEYS, MAX_DROP_REASONS, MAX_LISTEN_PORTS,
    },
    net::{FAMILY_IPV4, FAMILY_IPV6},
};
use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, generated::bpf_probe_read_kernel as gen_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::{
    addr::Addr,
    maps::{config, count},
    member::member,
};

#[map(name = "DROP_REASONS")]
static DROP_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_DROP_REASONS, 0);

/// Entries are allocated as keys appear (`BPF_F_NO_PREALLOC`): preallocated,
/// every possible key's per-CPU values would be reserved on every CPU
/// (96 KiB per CPU, 24 MiB on a 256-CPU node) for the few keys most
/// nodes use. Lookups cost the same; only a new key allocates.
#[map(name = "DROP_DEVICES")]
static DROP_DEVICES: PerCpuHashMap<DropDeviceKey, DropDeviceStats> =
    PerCpuHashMap::with_max_entries(MAX_DROP_DEVICE_KEYS, BPF_F_NO_PREALLOC);

/// Shared, not per-CPU: 4,096 keys of 40 bytes on every CPU would cost
/// far more than the atomic add on a drop (drops are the rare path).
#[map(name = "DROP_PEERS")]
static DROP_PEERS: LruHashMap<DropPeerKey, u64> =
    LruHashMap::with_max_entries(MAX_DROP_PEER_KEYS, 0);

#[map(name = "LISTEN_OVERFLOWS")]
static LISTEN_OVERFLOWS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(MAX_LISTEN_PORTS, 0);

#[map(name = "LISTEN_OVERFLOWS_OTHER")]
static LISTEN_OVERFLOWS_OTHER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW` on this kernel (u32::MAX: none).
#[unsafe(no_mangle)]
static DROP_REASON_LISTEN_OVERFLOW: Global<u32> = Global::new(u32::MAX);
/// `sk_buff.head`, `.transport_header`, `.network_header` and `.protocol`
/// (from BTF).
#[unsafe(no_mangle)]
static SKB_HEAD_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static SKB_TRANSPORT_HEADER_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static SKB_NETWORK_HEADER_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static SKB_PROTOCOL_OFFSET: Global<u32> = Global::new(u32::MAX);

/// Offset of `reason` in the kfree_skb record; u32::MAX: no such field.
#[unsafe(no_mangle)]
static TP_KFREE_SKB_REASON: Global<u32> = Global::new(u32::MAX);
/// Offset of `skbaddr` in the kfree_skb record.
#[unsafe(no_mangle)]
static TP_KFREE_SKB_SKBADDR: Global<u32> = Global::new(u32::MAX);
/// Offset of `protocol` (the skb's ethertype, which the tracepoint stores
/// in host order).
#[unsafe(no_mangle)]
static TP_KFREE_SKB_PROTOCOL: Global<u32> = Global::new(u32::MAX);
/// `sk_buff.dev`, `net_device.ifindex`, `net_device.nd_net` (a
/// `possible_net_t`, whose only member is the `struct net *`), and
/// `net.ns` + `ns_common.inum` (u32::MAX: unknown).
#[unsafe(no_mangle)]
static SKB_DEV_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static NETDEV_IFINDEX_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static NETDEV_NAME_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static NETDEV_ND_NET_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static NET_NS_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static NS_COMMON_INUM_OFFSET: Global<u32> = Global::new(u32::MAX);

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn sonde_kfree_skb(ctx: TracePointContext) -> u32 {
    let offset = TP_KFREE_SKB_REASON.load();
    let reason = if offset == u32::MAX {
        0
    } else {
        // SAFETY: offset from this kernel's format file.
        unsafe { ctx.read_at::<u32>(offset as usize) }.unwrap_or(0)
    };
    let at = TP_KFREE_SKB_SKBADDR.load();
    let skb = if at == u32::MAX {
        0
    } else {
        // SAFETY: offset from this kernel's format file.
        unsafe { ctx.read_at::<u64>(at as usize) }.unwrap_or(0)
    };
    count_drop(reason, skb, || {
        let at = TP_KFREE_SKB_PROTOCOL.load();
        if at == u32::MAX {
            return None;
        }
        // SAFETY: offset from this kernel's format file (host order).
        unsafe { ctx.read_at::<u16>(at as usize) }.ok()
    });
    0
}

/// The same count from the tracepoint's arguments, `kfree_skb(skb,
/// location, reason[, rx_sk])` since 5.17 (the tier needs the reason
/// field): no record is built for it, and the skb and reason are plain
/// loads where the classic program makes a probe-helper call for each.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn sonde_kfree_skb_raw(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    count_drop(reason as u32, skb, || {
        // `sk_buff.protocol` is big endian; the record holds it in host
        // order.
        member::<u16>(skb, SKB_PROTOCOL_OFFSET.load()).map(u16::from_be)
    });
    0
}

/// Counts a drop of `skb` (0: unknown) for `reason`: by reason, by the
/// device it had (one in `CFG_DROP_DEVICE_SAMPLE_PERIOD`, weighted by it),
/// and by peer while `CFG_DROP_PEERS` is on (`ethertype` gives the
/// packet's, in host order).
#[inline(always)]
fn count_drop(reason: u32, skb: u64, ethertype: impl FnOnce() -> Option<u16>) {
    let slot = if reason < DROP_REASON_OTHER {
        reason
    } else {
        DROP_REASON_OTHER
    };
    if let Some(n) = DROP_REASONS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *n += 1 };
    }
    if skb == 0 {
        return;
    }
    let period = config(CFG_DROP_DEVICE_SAMPLE_PERIOD);
    if period <= 1 {
        count_by_device(skb, slot, 1);
    } else if one_in(period) {
        count_by_device(skb, slot, period);
    }
    if config(CFG_DROP_PEERS) != 0
        && let Some(protocol) = ethertype()
    {
        count_by_peer(protocol, skb, slot);
    }
}

/// True for one call in `period` (a power of two: user space writes no
/// other), at random: a drop pattern cannot hide from it as it could from
/// every N-th.
#[inline(always)]
fn one_in(period: u64) -> bool {
    // SAFETY: the helper has no preconditions.
    u64::from(unsafe { bpf_get_prandom_u32() }) & (period - 1) == 0
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Counts the drop by (reason, source, destination) from the packet's IP
/// header (while `CFG_DROP_PEERS` is on: it nearly doubles a drop's cost,
/// 326 to 517 ns in `cargo xtask bench --only families`), where the skb
/// has one: its ethertype says IPv4 or IPv6, its
/// network header is set, and the version nibble there agrees (an skb
/// dropped before the stack parsed it can point anywhere in its buffer).
#[inline(always)]
fn count_by_peer(protocol: u16, skb: u64, reason: u32) {
    let Some(head) = member::<u64>(skb, SKB_HEAD_OFFSET.load()) else {
        return;
    };
    let Some(network) = member::<u16>(skb, SKB_NETWORK_HEADER_OFFSET.load()) else {
        return;
    };
    // `(u16)~0U`: no network header set.
    if network == u16::MAX {
        return;
    }
    let (family, src, dst) = match protocol {
        ETH_P_IP => {
            let Some(ip) = member::<[u8; 20]>(head, u32::from(network)) else {
                return;
            };
            if ip[0] >> 4 != 4 {
                return;
            }
            (FAMILY_IPV4, Addr::v4(&ip[12..16]), Addr::v4(&ip[16..20]))
        }
        ETH_P_IPV6 => {
            let Some(ip) = member::<[u8; 40]>(head, u32::from(network)) else {
                return;
            };
            if ip[0] >> 4 != 6 {
                return;
            }
            (FAMILY_IPV6, Addr::v6(&ip[8..24]), Addr::v6(&ip[24..40]))
        }
        _ => return,
    };
    let key = DropPeerKey {
        reason,
        family,
        _pad: [0; 3],
        src: src.bytes(),
        dst: dst.bytes(),
    };
    if DROP_PEERS.get_ptr_mut(key).is_none() {
        // BPF_NOEXIST: another CPU may have inserted it meanwhile; the
        // lookup below finds either.
        let _ = DROP_PEERS.insert(key, 0u64, u64::from(BPF_NOEXIST));
    }
    if let Some(n) = DROP_PEERS.get_ptr_mut(key) {
        // SAFETY: a value from a successful lookup, only ever added to
        // atomically (several CPUs may drop the same pair's packets).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    }
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn sonde_listen_overflow(ctx: TracePointContext) -> u32 {
    // The loader attaches it only with the reason field and value resolved.
    // SAFETY: offset from this kernel's format file.
    let reason = unsafe { ctx.read_at::<u32>(TP_KFREE_SKB_REASON.load() as usize) };
    if reason != Ok(DROP_REASON_LISTEN_OVERFLOW.load()) {
        return 0;
    }
    // SAFETY: offset from this kernel's format file.
    let skb = unsafe { ctx.read_at::<u64>(TP_KFREE_SKB_SKBADDR.load() as usize) }.unwrap_or(0);
    listen_overflow(skb);
    0
}

/// The same from the tracepoint's arguments (see `sonde_kfree_skb_raw`):
/// a drop of another reason costs one load of the reason.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn sonde_listen_overflow_raw(ctx: RawTracePointContext) -> i32 {
    let reason: u64 = ctx.arg(2);
    if reason as u32 != DROP_REASON_LISTEN_OVERFLOW.load() {
        return 0;
    }
    listen_overflow(ctx.arg(0));
    0
}

/// Counts a listen-queue overflow of `skb` by its listening port.
#[inline(always)]
fn listen_overflow(skb: u64) {
    match listening_port(skb) {
        Some(port) => count_listen_overflow(port),
        None => {
            if let Some(n) = LISTEN_OVERFLOWS_OTHER.get_ptr_mut(0) {
                // SAFETY: this CPU's slot.
                unsafe { *n += 1 };
            }
        }
    }
}

/// The destination port of the dropped segment (the listener's), from the
/// TCP header the receive path already located.
#[inline(always)]
fn listening_port(skb: u64) -> Option<u32> {
    let head = member::<u64>(skb, SKB_HEAD_OFFSET.load())?;
    let transport = member::<u16>(skb, SKB_TRANSPORT_HEADER_OFFSET.load())?;
    // `(u16)~0U`: no transport header set.
    if transport == u16::MAX {
        return None;
    }
    // `struct tcphdr`: source port, then destination port (big endian).
    let dest = member::<u16>(head, u32::from(transport) + 2)?;
    Some(u32::from(u16::from_be(dest)))
}

#[inline(always)]
fn count_listen_overflow(port: u32) {
    if let Some(n) = LISTEN_OVERFLOWS.get_ptr_mut(port) {
        // SAFETY: this CPU's value from a successful lookup.
        unsafe { *n += 1 };
        return;
    }
    // -EEXIST: another CPU created it; this CPU's copy starts at 0, so add.
    match LISTEN_OVERFLOWS.insert(port, 1u64, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(-17) => {
            if let Some(n) = LISTEN_OVERFLOWS.get_ptr_mut(port) {
                // SAFETY: as above.
                unsafe { *n += 1 };
            }
        }
        Err(_) => {
            if let Some(n) = LISTEN_OVERFLOWS_OTHER.get_ptr_mut(0) {
                // SAFETY: this CPU's slot.
                unsafe { *n += 1 };
            }
        }
    }
}

/// Adds `weight` drops (the sampling period) to the device's count.
#[inline(always)]
fn count_by_device(skb: u64, reason: u32, weight: u64) {
    // Packets freed after leaving (or before reaching) a device have none:
    // they stay counted by reason only.
    let Some(dev) = member::<u64>(skb, SKB_DEV_OFFSET.load()).filter(|&d| d != 0) else {
        return;
    };
    let Some(ifindex) = member::<u32>(dev, NETDEV_IFINDEX_OFFSET.load()) else {
        return;
    };
    let ns = NET_NS_OFFSET.load();
    let inum = NS_COMMON_INUM_OFFSET.load();
    let netns = if ns == u32::MAX || inum == u32::MAX {
        0
    } else {
        member::<u64>(dev, NETDEV_ND_NET_OFFSET.load())
            .and_then(|net| member::<u32>(net, ns + inum))
            .unwrap_or(0)
    };
    let key = DropDeviceKey {
        netns,
        ifindex,
        reason,
        _pad: 0,
    };
    if let Some(stats) = DROP_DEVICES.get_ptr_mut(key) {
        // SAFETY: this CPU's value from a successful lookup.
        unsafe { (*stats).drops += weight };
        return;
    }
    let mut first = DropDeviceStats {
        drops: weight,
        name: [0; IFNAME_LEN],
    };
    let name_at = NETDEV_NAME_OFFSET.load();
    if name_at != u32::MAX {
        // SAFETY: the helper writes at most IFNAME_LEN bytes into `name`
        // (the device's NUL-terminated name); zeroed on failure.
        unsafe {
            gen_probe_read_kernel(
                first.name.as_mut_ptr().cast(),
                IFNAME_LEN as u32,
                (dev + u64::from(name_at)) as *const _,
            )
        };
    }
    // -EEXIST: another CPU created it; this CPU's copy starts at 0, so add.
    match DROP_DEVICES.insert(key, first, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(-17) => {
            if let Some(stats) = DROP_DEVICES.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { (*stats).drops += weight };
            }
        }
        Err(_) => count(DROP_DEVICE_MAP_FULL),
    }
}
