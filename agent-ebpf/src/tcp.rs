//! TCP lifecycle: handshake latency (SYN_SENT → ESTABLISHED), failed
//! handshakes, passive opens, state transitions, retransmits, resets sent
//! and received, and smoothed-RTT samples.
//!
//! Four tiers compute the same numbers; the loader attaches the cheapest
//! this kernel offers: fentry (BTF trampolines), raw tracepoints, kprobes,
//! then the classic `sock` and `tcp` tracepoints. Tracepoint field offsets
//! come from this kernel's tracepoint formats; the struct offsets the other
//! tiers read (`sock_common.skc_state`, `sock.sk_protocol`,
//! `tcp_sock.srtt_us`, the peer's address) from its BTF.
//!
//! Why raw tracepoints come before kprobes: kprobe and classic tracepoint
//! programs share one per-CPU guard (bpf_prog_active), so a state change
//! processed in a softirq that interrupted any other such program on that
//! CPU is skipped by the kernel. fentry and raw tracepoint programs only
//! skip a run that nests in the same program.

use agent_common::{
    config::CFG_TCP_RTT,
    counters::TCP_CONNECT_MAP_FULL,
    syscalls::latency_slot,
    tcp::{
        MAX_CONNECTS_IN_FLIGHT, MAX_TCP_PEERS, PEER_FAMILY_IPV4, PEER_FAMILY_IPV6, TCP_STATES,
        TcpPeerKey, TcpPeerStats, TcpStats,
    },
};
use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::{
    addr::Addr,
    maps::{config, count},
};

#[map(name = "TCP_STATS")]
static TCP_STATS: PerCpuArray<TcpStats> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "TCP_TRANSITIONS")]
static TCP_TRANSITIONS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(TCP_STATES * TCP_STATES, 0);

#[map(name = "TCP_PEERS")]
static TCP_PEERS: LruHashMap<TcpPeerKey, TcpPeerStats> =
    LruHashMap::with_max_entries(MAX_TCP_PEERS, 0);

#[map(name = "TCP_CONNECT_START")]
static TCP_CONNECT_START: HashMap<u64, u64> = HashMap::with_max_entries(MAX_CONNECTS_IN_FLIGHT, 0);

// Offsets of the fields we read, from the tracepoint format files.
#[unsafe(no_mangle)]
static TP_SSS_SKADDR: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static TP_SSS_OLDSTATE: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static TP_SSS_NEWSTATE: Global<u32> = Global::new(20);
#[unsafe(no_mangle)]
static TP_SSS_PROTOCOL: Global<u32> = Global::new(30);
#[unsafe(no_mangle)]
static TP_PROBE_SRTT: Global<u32> = Global::new(100);
// Peer address fields (u32::MAX: this kernel's record lacks them).
#[unsafe(no_mangle)]
static TP_SSS_FAMILY: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_SSS_DADDR: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_SSS_DADDR_V6: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_RETX_FAMILY: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_RETX_DADDR: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_RETX_DADDR_V6: Global<u32> = Global::new(u32::MAX);
/// `tcp_probe`'s daddr: a sockaddr_in / sockaddr_in6.
#[unsafe(no_mangle)]
static TP_PROBE_DADDR: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static SK_FAMILY_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static SK_DADDR_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static SK_V6_DADDR_OFFSET: Global<u32> = Global::new(u32::MAX);
// Struct offsets for the fentry and kprobe tiers, from this kernel's BTF.
#[unsafe(no_mangle)]
static SK_STATE_OFFSET: Global<u32> = Global::new(18);
#[unsafe(no_mangle)]
static TCP_SRTT_OFFSET: Global<u32> = Global::new(0);
/// `sock.sk_protocol` (raw tracepoint tier: inet_sock_set_state also fires
/// for SCTP and DCCP sockets). Read as its low byte: a u16 from Linux 5.6,
/// a byte-aligned 8-bit bitfield before.
#[unsafe(no_mangle)]
static SK_PROTOCOL_OFFSET: Global<u32> = Global::new(u32::MAX);

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// `sock_common`'s first bytes: `skc_daddr` opens it (in the union with
/// `skc_addrpair`) and `skc_family` follows the address pair, the hash and
/// the ports, on every kernel Sonde supports. Read whole only where this
/// kernel's BTF gives those two offsets.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockCommonHead {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    hash: u32,
    ports: u32,
    family: u16,
}
const SOCK_COMMON_DADDR: u32 = 0;
const SOCK_COMMON_FAMILY: u32 = 16;

/// Where a program can read the remote address of the connection from.
enum PeerSource<'a> {
    /// Record fields (family, IPv4 address, IPv6 address offsets).
    Record(&'a TracePointContext, u32, u32, u32),
    /// A sockaddr in the record (tcp_probe).
    SockAddr(&'a TracePointContext, u32),
    /// A `struct sock *` (fentry, kprobe tiers; BTF offsets).
    Sock(u64),
}

impl PeerSource<'_> {
    #[inline(always)]
    fn key(&self) -> Option<TcpPeerKey> {
        let family: u32;
        let addr: Addr;
        // SAFETY (all reads): record offsets from the format files, struct
        // offsets from BTF; kernel memory through the probe helper.
        unsafe {
            match *self {
                PeerSource::Record(ctx, family_at, v4, v6) => {
                    if family_at == u32::MAX || v4 == u32::MAX || v6 == u32::MAX {
                        return None;
                    }
                    family = u32::from(ctx.read_at::<u16>(family_at as usize).ok()?);
                    if family == PEER_FAMILY_IPV4 {
                        let a: [u8; 4] = ctx.read_at(v4 as usize).ok()?;
                        addr = Addr::v4(&a);
                    } else {
                        addr = Addr::v6(&ctx.read_at::<[u8; 16]>(v6 as usize).ok()?);
                    }
                }
                PeerSource::SockAddr(ctx, at) => {
                    if at == u32::MAX {
                        return None;
                    }
                    let at = at as usize;
                    family = u32::from(ctx.read_at::<u16>(at).ok()?);
                    if family == PEER_FAMILY_IPV4 {
                        let a: [u8; 4] = ctx.read_at(at + 4).ok()?;
                        addr = Addr::v4(&a);
                    } else {
                        addr = Addr::v6(&ctx.read_at::<[u8; 16]>(at + 8).ok()?);
                    }
                }
                PeerSource::Sock(sk) => {
                    let (f, v4, v6) = (
                        SK_FAMILY_OFFSET.load(),
                        SK_DADDR_OFFSET.load(),
                        SK_V6_DADDR_OFFSET.load(),
                    );
                    if f == u32::MAX || v4 == u32::MAX || v6 == u32::MAX {
                        return None;
                    }
                    // The family, and the IPv4 address when it is one.
                    let (fam, a4) = if f == SOCK_COMMON_FAMILY && v4 == SOCK_COMMON_DADDR {
                        // The layout every kernel has: one read for both, a
                        // helper call saved per sample (the verifier drops
                        // the other branch: the offsets are read-only
                        // globals).
                        let head: SockCommonHead =
                            bpf_probe_read_kernel(sk as *const SockCommonHead).ok()?;
                        (head.family, Some(head.daddr))
                    } else {
                        (
                            bpf_probe_read_kernel((sk + u64::from(f)) as *const u16).ok()?,
                            None,
                        )
                    };
                    family = u32::from(fam);
                    if family == PEER_FAMILY_IPV4 {
                        let a: [u8; 4] = match a4 {
                            Some(a) => a,
                            None => bpf_probe_read_kernel((sk + u64::from(v4)) as *const [u8; 4])
                                .ok()?,
                        };
                        addr = Addr::v4(&a);
                    } else {
                        addr = Addr::v6(
                            &bpf_probe_read_kernel((sk + u64::from(v6)) as *const [u8; 16]).ok()?,
                        );
                    }
                }
            }
        }
        // Built whole at the end: see `Addr` for why not field by field.
        (family == PEER_FAMILY_IPV4 || family == PEER_FAMILY_IPV6).then_some(TcpPeerKey {
            family,
            addr: addr.bytes(),
        })
    }
}

/// The peer's statistics, created on first use (the LRU bounds them).
#[inline(always)]
fn peer(source: &PeerSource) -> Option<&'static mut TcpPeerStats> {
    let key = source.key()?;
    if let Some(p) = TCP_PEERS.get_ptr_mut(key) {
        // SAFETY: a map value from a successful lookup.
        return Some(unsafe { &mut *p });
    }
    let _ = TCP_PEERS.insert(key, TcpPeerStats::default(), u64::from(BPF_NOEXIST));
    // SAFETY: as above.
    TCP_PEERS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// Atomic add on a shared map value.
#[inline(always)]
fn add(counter: &mut u64, value: u64) {
    // SAFETY: a valid, aligned u64 in a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

#[inline(always)]
fn stats() -> Option<&'static mut TcpStats> {
    // SAFETY: this CPU's slot; programs do not nest on one CPU.
    TCP_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sonde_tcp_state(ctx: TracePointContext) -> u32 {
    let _ = on_state(&ctx);
    0
}

#[inline(always)]
fn on_state(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY (all reads): offsets from this kernel's format file.
    let protocol: u16 = unsafe { ctx.read_at(TP_SSS_PROTOCOL.load() as usize)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old: i32 = unsafe { ctx.read_at(TP_SSS_OLDSTATE.load() as usize)? };
    let new: i32 = unsafe { ctx.read_at(TP_SSS_NEWSTATE.load() as usize)? };
    let skaddr: u64 = unsafe { ctx.read_at(TP_SSS_SKADDR.load() as usize)? };
    let source = PeerSource::Record(
        ctx,
        TP_SSS_FAMILY.load(),
        TP_SSS_DADDR.load(),
        TP_SSS_DADDR_V6.load(),
    );
    on_transition(skaddr, old, new, &source);
    Ok(())
}

/// `sk`'s state as the kernel stores it (`sock_common.skc_state`).
#[inline(always)]
fn sk_state(sk: u64) -> i32 {
    // SAFETY: a kernel pointer read with the probe helper; the offset comes
    // from this kernel's BTF.
    unsafe { bpf_probe_read_kernel((sk + u64::from(SK_STATE_OFFSET.load())) as *const u8) }
        .map(i32::from)
        .unwrap_or(0)
}

/// `tcp_set_state(sk, state)` is about to move `sk` to `state`.
#[inline(always)]
fn on_set_state(sk: u64, state: i32) {
    on_transition(sk, sk_state(sk), state, &PeerSource::Sock(sk));
}

#[fentry(function = "tcp_set_state")]
pub fn sonde_tcp_state_fentry(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let state: i32 = ctx.arg(1);
    on_set_state(sk, state);
    0
}

#[kprobe]
pub fn sonde_tcp_state_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(state)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(1)) {
        on_set_state(sk, state);
    }
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sonde_tcp_state_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let at = SK_PROTOCOL_OFFSET.load();
    if at == u32::MAX {
        return 0;
    }
    // SAFETY: a kernel pointer read with the probe helper; offset from BTF.
    let protocol = unsafe { bpf_probe_read_kernel((sk + u64::from(at)) as *const u8) };
    if protocol != Ok(IPPROTO_TCP as u8) {
        return 0;
    }
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    on_transition(sk, old as i32, new as i32, &PeerSource::Sock(sk));
    0
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn on_transition(skaddr: u64, old: i32, new: i32, source: &PeerSource) {
    if (0..TCP_STATES as i32).contains(&old) && (0..TCP_STATES as i32).contains(&new) {
        let index = old as u32 * TCP_STATES + new as u32;
        if let Some(n) = TCP_TRANSITIONS.get_ptr_mut(index) {
            // SAFETY: this CPU's slot.
            unsafe { *n += 1 };
        }
    }
    // The clock only where a handshake is timed: a helper call saved on
    // most transitions.
    match (old, new) {
        (_, TCP_SYN_SENT) => {
            if TCP_CONNECT_START.insert(skaddr, now(), 0).is_err() {
                count(TCP_CONNECT_MAP_FULL);
            }
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            let now = now();
            let start = TCP_CONNECT_START.get_ptr(skaddr).map(|p| {
                // SAFETY: from a successful lookup, copied before the delete.
                unsafe { *p }
            });
            let _ = TCP_CONNECT_START.remove(skaddr);
            if let Some(start) = start {
                let latency = now.saturating_sub(start);
                let slot = latency_slot(latency);
                if let Some(stats) = stats() {
                    stats.connects += 1;
                    stats.connect_latency_sum_ns += latency;
                    if let Some(n) = stats.connect_latency_slots.get_mut(slot) {
                        *n += 1;
                    }
                }
                if let Some(peer) = peer(source) {
                    add(&mut peer.connects, 1);
                    add(&mut peer.connect_latency_sum_ns, latency);
                    if let Some(n) = peer.connect_latency_slots.get_mut(slot) {
                        add(n, 1);
                    }
                }
            }
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let _ = TCP_CONNECT_START.remove(skaddr);
            if let Some(stats) = stats() {
                stats.connect_failures += 1;
            }
            if let Some(peer) = peer(source) {
                add(&mut peer.connect_failures, 1);
            }
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            if let Some(stats) = stats() {
                stats.accepts += 1;
            }
        }
        _ => {}
    }
}

/// Generates the tracepoint, fentry and kprobe programs of a signal that is
/// a plain count of calls.
macro_rules! counting_programs {
    ($field:ident, $tp:ident, $tp_category:literal, $tp_name:literal,
     $fentry:ident, $fentry_fn:literal, $kprobe:ident) => {
        #[tracepoint(category = $tp_category, name = $tp_name)]
        pub fn $tp(_ctx: TracePointContext) -> u32 {
            bump(|s| s.$field += 1);
            0
        }

        #[fentry(function = $fentry_fn)]
        pub fn $fentry(_ctx: FEntryContext) -> u32 {
            bump(|s| s.$field += 1);
            0
        }

        #[kprobe]
        pub fn $kprobe(_ctx: ProbeContext) -> u32 {
            bump(|s| s.$field += 1);
            0
        }
    };
}

#[inline(always)]
fn bump(f: impl FnOnce(&mut TcpStats)) {
    if let Some(stats) = stats() {
        f(stats);
    }
}

#[inline(always)]
fn on_retransmit(source: &PeerSource) {
    bump(|s| s.retransmits += 1);
    if let Some(peer) = peer(source) {
        add(&mut peer.retransmits, 1);
    }
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn sonde_tcp_retransmit(ctx: TracePointContext) -> u32 {
    on_retransmit(&PeerSource::Record(
        &ctx,
        TP_RETX_FAMILY.load(),
        TP_RETX_DADDR.load(),
        TP_RETX_DADDR_V6.load(),
    ));
    0
}

/// Retransmissions inside `tcp_retransmit_skb` (fentry tier), by skb: 1 once
/// `__tcp_retransmit_skb`'s exit has seen it. Some kernels (Debian's 6.1)
/// inline `__tcp_retransmit_skb` into `tcp_retransmit_skb` and keep an
/// out-of-line copy only for its other caller, the tail-loss probe; others
/// (6.12) call it. Hooking both functions and counting each retransmission
/// once, where it was seen, is right on either.
#[map]
static RETRANSMITS_IN_FLIGHT: HashMap<u64, u8> =
    HashMap::with_max_entries(MAX_RETRANSMITS_IN_FLIGHT, 0);
const MAX_RETRANSMITS_IN_FLIGHT: u32 = 256;

#[fentry(function = "tcp_retransmit_skb")]
pub fn sonde_tcp_retransmit_fentry(ctx: FEntryContext) -> u32 {
    let skb: u64 = ctx.arg(1);
    // Full (256 retransmissions at once): the exit below cannot tell and
    // leaves this one to __tcp_retransmit_skb's exit, if it has one.
    let _ = RETRANSMITS_IN_FLIGHT.insert(skb, 0, 0);
    0
}

/// `int tcp_retransmit_skb(struct sock *sk, struct sk_buff *skb, int segs)`:
/// the return value follows the three arguments; 0 is a retransmission sent,
/// which is what the tracepoint and the kernel's RetransSegs count.
#[fexit(function = "tcp_retransmit_skb")]
pub fn sonde_tcp_retransmit_fexit(ctx: FExitContext) -> u32 {
    let skb: u64 = ctx.arg(1);
    let inner_saw_it = unsafe { RETRANSMITS_IN_FLIGHT.get(skb) }.copied();
    let _ = RETRANSMITS_IN_FLIGHT.remove(skb);
    let ret: i32 = ctx.arg(3);
    if inner_saw_it == Some(0) && ret == 0 {
        on_retransmit(&PeerSource::Sock(ctx.arg(0)));
    }
    0
}

/// `int __tcp_retransmit_skb(struct sock *sk, struct sk_buff *skb, int segs)`,
/// where it is a function of its own: every retransmission sent passes it.
#[fexit(function = "__tcp_retransmit_skb")]
pub fn sonde_tcp_retransmit_inner_fexit(ctx: FExitContext) -> u32 {
    let skb: u64 = ctx.arg(1);
    if let Some(seen) = RETRANSMITS_IN_FLIGHT.get_ptr_mut(skb) {
        unsafe { *seen = 1 };
    }
    let ret: i32 = ctx.arg(3);
    if ret == 0 {
        on_retransmit(&PeerSource::Sock(ctx.arg(0)));
    }
    0
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, …)`:
/// the tracepoint the classic tier uses, with the socket's own fields.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn sonde_tcp_retransmit_raw(ctx: RawTracePointContext) -> i32 {
    on_retransmit(&PeerSource::Sock(ctx.arg(0)));
    0
}

/// A retransmission call a kprobe saw enter, for its kretprobe: the socket
/// to count it on, and the skb that tells a nested `__tcp_retransmit_skb`
/// from a direct one. The count waits for the return value, 0 being a
/// retransmission sent, which is what the tracepoint, the fexit tier and the
/// kernel's RetransSegs count: calls refused early (the original still in
/// the host's queue, the socket's send memory full) are not retransmissions.
/// Per CPU, because a kretprobe sees no arguments and these functions do
/// not sleep; a softirq's retransmission nested in a process-context one on
/// the same CPU overwrites the slot, and the outer call goes uncounted.
#[repr(C)]
#[derive(Clone, Copy)]
struct RetransmitCall {
    sk: u64,
    skb: u64,
}

/// `tcp_retransmit_skb`, the outer function on every kernel.
#[map]
static RETRANSMIT_OUTER_CALL: PerCpuArray<RetransmitCall> = PerCpuArray::with_max_entries(1, 0);
/// `__tcp_retransmit_skb` where it is a function of its own and called
/// directly (the tail-loss probe); `sk` 0 when it is the nested call.
#[map]
static RETRANSMIT_INNER_CALL: PerCpuArray<RetransmitCall> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn enter_retransmit(slot: &PerCpuArray<RetransmitCall>, call: RetransmitCall) {
    if let Some(entry) = slot.get_ptr_mut(0) {
        unsafe { *entry = call };
    }
}

/// Counts the call `slot` holds if it returned 0, and empties the slot.
#[inline(always)]
fn return_from_retransmit(slot: &PerCpuArray<RetransmitCall>, ret: i32) {
    if let Some(entry) = slot.get_ptr_mut(0) {
        let call = unsafe { *entry };
        unsafe { *entry = RetransmitCall { sk: 0, skb: 0 } };
        if call.sk != 0 && ret == 0 {
            on_retransmit(&PeerSource::Sock(call.sk));
        }
    }
}

#[kprobe]
pub fn sonde_tcp_retransmit_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        enter_retransmit(&RETRANSMIT_OUTER_CALL, RetransmitCall { sk, skb });
    }
    0
}

#[kretprobe]
pub fn sonde_tcp_retransmit_kretprobe(ctx: RetProbeContext) -> u32 {
    return_from_retransmit(&RETRANSMIT_OUTER_CALL, ctx.ret());
    0
}

/// `__tcp_retransmit_skb`: left to the outer call's return when it is the
/// nested call of the `tcp_retransmit_skb` this CPU is inside.
#[kprobe]
pub fn sonde_tcp_retransmit_inner_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        let nested = RETRANSMIT_OUTER_CALL
            .get(0)
            .is_some_and(|outer| outer.sk != 0 && outer.skb == skb);
        let call = if nested {
            RetransmitCall { sk: 0, skb: 0 }
        } else {
            RetransmitCall { sk, skb }
        };
        enter_retransmit(&RETRANSMIT_INNER_CALL, call);
    }
    0
}

#[kretprobe]
pub fn sonde_tcp_retransmit_inner_kretprobe(ctx: RetProbeContext) -> u32 {
    return_from_retransmit(&RETRANSMIT_INNER_CALL, ctx.ret());
    0
}

counting_programs!(
    resets_received,
    sonde_tcp_receive_reset,
    "tcp",
    "tcp_receive_reset",
    sonde_tcp_receive_reset_fentry,
    "tcp_reset",
    sonde_tcp_receive_reset_kprobe
);
counting_programs!(
    resets_sent,
    sonde_tcp_send_reset,
    "tcp",
    "tcp_send_reset",
    sonde_tcp_send_reset_fentry,
    "tcp_v4_send_reset",
    sonde_tcp_send_reset_kprobe
);

/// `tcp_receive_reset(struct sock *sk)`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn sonde_tcp_receive_reset_raw(_ctx: RawTracePointContext) -> i32 {
    bump(|s| s.resets_received += 1);
    0
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, …)`.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn sonde_tcp_send_reset_raw(_ctx: RawTracePointContext) -> i32 {
    bump(|s| s.resets_sent += 1);
    0
}

/// Resets sent on established connections (`tcp_send_active_reset`); the
/// tracepoint tier sees them through `tcp:tcp_send_reset`.
#[fentry(function = "tcp_send_active_reset")]
pub fn sonde_tcp_send_active_reset_fentry(_ctx: FEntryContext) -> u32 {
    bump(|s| s.resets_sent += 1);
    0
}

/// One smoothed-RTT sample per ACK processed; can be switched off at run
/// time (`[tcp] rtt = false`) on hosts with very high ACK rates.
#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn sonde_tcp_probe(ctx: TracePointContext) -> u32 {
    if config(CFG_TCP_RTT) == 0 {
        return 0;
    }
    // SAFETY: offset from this kernel's format file.
    if let Ok(srtt_us) = unsafe { ctx.read_at::<u32>(TP_PROBE_SRTT.load() as usize) } {
        rtt_sample(srtt_us, &PeerSource::SockAddr(&ctx, TP_PROBE_DADDR.load()));
    }
    0
}

/// `tcp_rcv_established(sk, skb)`: the same point `tcp:tcp_probe` fires.
#[inline(always)]
fn on_rcv_established(sk: u64) {
    if config(CFG_TCP_RTT) == 0 {
        return;
    }
    // SAFETY: kernel pointer read with the probe helper; offset from BTF.
    // The kernel keeps srtt_us scaled by 8 (tcp_probe reports it >> 3).
    let srtt: Result<u32, i32> =
        unsafe { bpf_probe_read_kernel((sk + u64::from(TCP_SRTT_OFFSET.load())) as *const u32) };
    if let Ok(srtt) = srtt {
        rtt_sample(srtt >> 3, &PeerSource::Sock(sk));
    }
}

#[fentry(function = "tcp_rcv_established")]
pub fn sonde_tcp_rtt_fentry(ctx: FEntryContext) -> u32 {
    on_rcv_established(ctx.arg(0));
    0
}

#[kprobe]
pub fn sonde_tcp_rtt_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        on_rcv_established(sk);
    }
    0
}

/// `tcp_probe(struct sock *sk, struct sk_buff *skb)`, fired from
/// `tcp_rcv_established`.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn sonde_tcp_rtt_raw(ctx: RawTracePointContext) -> i32 {
    on_rcv_established(ctx.arg(0));
    0
}

#[inline(always)]
fn rtt_sample(srtt_us: u32, source: &PeerSource) {
    if let Some(peer) = peer(source) {
        add(&mut peer.rtt_samples, 1);
        add(&mut peer.rtt_sum_us, u64::from(srtt_us));
    }
    if let Some(stats) = stats() {
        let us = u64::from(srtt_us);
        stats.rtt_samples += 1;
        stats.rtt_sum_us += us;
        if let Some(slot) = stats.rtt_slots.get_mut(latency_slot(us * 1000)) {
            *slot += 1;
        }
    }
}
