//! Packet accounting shared by the XDP and TC hooks: one parser over any
//! packet source, per-(interface, direction, family, protocol) counters with
//! TCP flags and ICMPv6 link control, and the flow table with rate-limited
//! new-flow events.
//!
//! The programs observe: XDP passes, TC hands the packet on to whatever
//! comes next (TC_ACT_UNSPEC), so Sonde does not change the fate of a packet
//! or of another program's verdict — with one exception, off by default:
//! in MAPE-K enforce mode, ingress TCP SYNs (without ACK) from a source on
//! the blocklist are dropped until the entry's expiry ([`ingress`]): new
//! inbound connections only. Egress is never blocked.

mod parse;
mod tc;
mod xdp;

use agent_common::{
    config::{CFG_BLOCKLIST_ACTIVE, CFG_FLOW_EVENTS_BURST, CFG_FLOW_EVENTS_PER_SEC},
    counters::{FLOW_CREATED, FLOW_EVENT_RATE_LIMITED, FLOW_INSERT_FAILED, PACKET_MAP_FULL},
    events::{EVENT_NEW_FLOW, EventHeader, FlowEvent, RING_FLOW, TokenBucket},
    net::{
        BlocklistEntry, BlocklistKey, BlocklistStats, DEFAULT_MAX_FLOWS, DIRECTION_INGRESS,
        FAMILY_IPV6, FLOW_FRAGMENTS, FlowKey, FlowStats, IPPROTO_ICMPV6, IPPROTO_TCP,
        MAX_BLOCKLIST, MAX_PACKET_KEYS, PacketCounters, PacketKey, is_icmpv6_link_control,
    },
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
pub use parse::PacketSource;

use crate::{
    events::emit,
    maps::{config, count},
};

/// Entries are allocated as keys appear (`BPF_F_NO_PREALLOC`): preallocated,
/// every possible key's per-CPU values would be reserved on every CPU
/// (192 KiB per CPU, 48 MiB on a 256-CPU node) for the few keys most
/// nodes use. Lookups cost the same; only a new key allocates.
#[map(name = "PACKET_COUNTERS")]
static PACKET_COUNTERS: PerCpuHashMap<PacketKey, PacketCounters> =
    PerCpuHashMap::with_max_entries(MAX_PACKET_KEYS, BPF_F_NO_PREALLOC);

/// Resized by the loader from the configured flow-table size. Shared, not
/// per-CPU: a per-CPU table costs max_flows × CPUs × 24 bytes (201 MB for
/// 64k flows on a 128-CPU node); atomic adds on one value cost far less.
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Sources whose new inbound TCP connections (SYNs) are dropped until their
/// entry expires.
/// Shared, small (user space holds at most `[mapek] max_blocked` entries).
#[map(name = "BLOCKLIST")]
static BLOCKLIST: HashMap<BlocklistKey, BlocklistEntry> =
    HashMap::with_max_entries(MAX_BLOCKLIST, 0);

/// Every packet dropped for the blocklist: the exported totals, which keep
/// growing when entries are removed.
#[map(name = "BLOCKLIST_STATS")]
static BLOCKLIST_STATS: PerCpuArray<BlocklistStats> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "FLOW_EVENT_BUCKET")]
static FLOW_EVENT_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// One token of the flow-event bucket, in bucket units (tokens × 1e9, so
/// that a rate in tokens per second is a rate in units per nanosecond).
const TOKEN: u64 = 1_000_000_000;
/// Upper bound on the configured event rate and burst.
const MAX_RATE: u64 = 1_000_000;

/// What the ingress programs do with a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Its source is on the blocklist.
    Drop,
}

/// Accounts one ingress packet, then decides its fate. A blocked packet is
/// still accounted like any other (interface counters, flow table: it did
/// arrive, and the detector keeps seeing the attack it belongs to); its
/// drop is counted on top, in its blocklist entry and `BLOCKLIST_STATS`.
#[inline(always)]
pub fn ingress<P: PacketSource>(packet: &P) -> Verdict {
    let parsed = account(packet, DIRECTION_INGRESS);
    if blocked(&parsed, u64::from(packet.len())) {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

/// Whether the packet opens a new connection from a blocked source: a TCP
/// SYN without ACK from an unexpired entry, whose counters then take the
/// packet. Everything else passes: the rest of TCP (so a blocked peer's
/// replies to connections this node opened, SYN-ACK included, still
/// arrive, and so do its established connections until they end), and
/// every non-TCP packet. UDP and ICMP carry no "new connection" mark a
/// program can read without connection tracking, so dropping them would
/// also drop a blocked peer's answers to this node (DNS replies, ICMP
/// errors); enforce mode blocks new TCP connections only (docs/deploy.md).
/// Nothing is looked up while the blocklist is empty.
#[inline(always)]
fn blocked(parsed: &parse::Parsed, bytes: u64) -> bool {
    if !parsed.is_ip() || config(CFG_BLOCKLIST_ACTIVE) == 0 {
        return false;
    }
    if parsed.protocol != IPPROTO_TCP
        || !parsed.has_ports
        || parsed.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
    {
        return false;
    }
    let key = BlocklistKey {
        family: parsed.family,
        _pad: [0; 3],
        addr: parsed.src.bytes(),
    };
    let Some(entry) = BLOCKLIST.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value from a successful lookup, valid for this run;
    // user space writes expires_ns only by replacing the whole entry.
    if now >= unsafe { (*entry).expires_ns } {
        // Expired: user space removes it on its next sweep.
        return false;
    }
    // SAFETY: as above; the counters are only ever updated atomically
    // (every CPU shares the entry).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).bytes, bytes);
    }
    if let Some(stats) = BLOCKLIST_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
    }
    true
}

/// Accounts one packet seen on `direction` of the packet's interface, and
/// returns what the parser read from it.
#[inline(always)]
pub fn account<P: PacketSource>(packet: &P, direction: u8) -> parse::Parsed {
    let parsed = parse::parse(packet);
    let ifindex = packet.ifindex();
    let bytes = u64::from(packet.len());

    let key = PacketKey {
        ifindex,
        direction,
        family: parsed.family,
        protocol: parsed.protocol,
        _pad: 0,
    };
    if let Some(counters) = packet_counters(&key) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        let counters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += bytes;
        if parsed.fragment {
            counters.ip_fragments += 1;
        }
        if parsed.protocol == IPPROTO_TCP && parsed.has_ports {
            let flags = parsed.tcp_flags;
            if flags & TCP_SYN != 0 {
                if flags & TCP_ACK != 0 {
                    counters.tcp_synack += 1;
                } else {
                    counters.tcp_syn += 1;
                }
            }
            if flags & TCP_RST != 0 {
                counters.tcp_rst += 1;
            }
            if flags & TCP_FIN != 0 {
                counters.tcp_fin += 1;
            }
        } else if parsed.protocol == IPPROTO_ICMPV6
            && parsed.family == FAMILY_IPV6
            // The parser puts the ICMP type in `src_port` (0, not link
            // control, when the header is short).
            && is_icmpv6_link_control(parsed.src_port as u8)
        {
            counters.icmpv6_link_control += 1;
        }
    }

    if !parsed.is_ip() {
        return parsed;
    }
    let flow = FlowKey {
        ifindex,
        direction,
        family: parsed.family,
        protocol: parsed.protocol,
        flags: if parsed.fragment { FLOW_FRAGMENTS } else { 0 },
        src_addr: parsed.src.bytes(),
        dst_addr: parsed.dst.bytes(),
        src_port: parsed.src_port,
        dst_port: parsed.dst_port,
    };
    account_flow(&flow, bytes);
    parsed
}

#[inline(always)]
fn packet_counters(key: &PacketKey) -> Option<*mut PacketCounters> {
    if let Some(counters) = PACKET_COUNTERS.get_ptr_mut(key) {
        return Some(counters);
    }
    // BPF_NOEXIST: another CPU may have inserted it meanwhile; that is fine,
    // the lookup below finds it.
    let zero = PacketCounters::default();
    if let Err(err) = PACKET_COUNTERS.insert(key, zero, u64::from(BPF_NOEXIST))
        && err != -17
    {
        count(PACKET_MAP_FULL);
        return None;
    }
    PACKET_COUNTERS.get_ptr_mut(key)
}

#[inline(always)]
fn account_flow(flow: &FlowKey, bytes: u64) {
    // No clock on a known flow: a helper call per packet saved. User space
    // tells an idle flow by its counts, which stop moving.
    if let Some(stats) = FLOWS.get_ptr_mut(flow) {
        touch_flow(stats, bytes);
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let first = FlowStats {
        packets: 1,
        bytes,
        first_seen_ns: now,
    };
    match FLOWS.insert(flow, first, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            count(FLOW_CREATED);
            new_flow_event(flow, bytes, now);
        }
        // -EEXIST: another CPU created it between our lookup and insert.
        Err(-17) => {
            if let Some(stats) = FLOWS.get_ptr_mut(flow) {
                touch_flow(stats, bytes);
            }
        }
        Err(_) => count(FLOW_INSERT_FAILED),
    }
}

/// Adds one packet to a flow. Packets of one flow may be counted on several
/// CPUs at once: the counters use atomic adds.
#[inline(always)]
fn touch_flow(stats: *mut FlowStats, bytes: u64) {
    // SAFETY: a map value from a successful lookup, valid for this program
    // run; the counters are only ever updated atomically.
    // The BPF target has no atomic types in core; the intrinsic lowers to
    // the BPF atomic add instruction (`lock *(u64 *)(r + off) += r`).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).bytes, bytes);
    }
}

/// Emits a new-flow event if this CPU's token bucket allows it; a refused
/// event is counted as rate limited.
#[inline(always)]
fn new_flow_event(flow: &FlowKey, bytes: u64, now: u64) {
    // Clamped so that the products below fit in u64 (no 128-bit maths in
    // BPF): elapsed ≤ 1e11 ns times rate ≤ 1e6 stays under 2^64.
    let rate = config(CFG_FLOW_EVENTS_PER_SEC).min(MAX_RATE);
    let burst = config(CFG_FLOW_EVENTS_BURST).clamp(1, MAX_RATE) * TOKEN;
    let Some(bucket) = FLOW_EVENT_BUCKET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value.
    let bucket = unsafe { &mut *bucket };
    let elapsed = now.saturating_sub(bucket.last_ns).min(100 * TOKEN);
    bucket.last_ns = now;
    bucket.tokens = bucket.tokens.saturating_add(elapsed * rate).min(burst);
    if rate == 0 || bucket.tokens < TOKEN {
        count(FLOW_EVENT_RATE_LIMITED);
        return;
    }
    bucket.tokens -= TOKEN;
    emit::<FlowEvent>(RING_FLOW, |event| {
        event.header = EventHeader {
            kind: EVENT_NEW_FLOW,
            // SAFETY: helper without preconditions.
            cpu: unsafe { bpf_get_smp_processor_id() },
            ts_ns: now,
        };
        event.key = *flow;
        event.bytes = bytes as u32;
        event._pad = 0;
    });
}
