//! TCP lifecycle: handshake latency (SYN_SENT → ESTABLISHED), failed
//! handshakes, passive opens, state transitions, retransmits, resets sent
//! and received, and smoothed-RTT samples.
//!
//! Three tiers compute the same numbers; the loader attaches the cheapest
//! this kernel offers: fentry (BTF trampolines), kprobes, then the `sock` and
//! `tcp` tracepoints. Tracepoint field offsets come from this kernel's
//! tracepoint formats; the struct offsets the fentry and kprobe tiers read
//! (`sock_common.skc_state`, `tcp_sock.srtt_us`) from its BTF.

use agent_common::{
    config::CFG_TCP_RTT,
    counters::TCP_CONNECT_MAP_FULL,
    syscalls::latency_slot,
    tcp::{MAX_CONNECTS_IN_FLIGHT, TCP_STATES, TcpStats},
};
use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{fentry, kprobe, map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};

use crate::maps::{config, count};

#[map(name = "TCP_STATS")]
static TCP_STATS: PerCpuArray<TcpStats> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "TCP_TRANSITIONS")]
static TCP_TRANSITIONS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(TCP_STATES * TCP_STATES, 0);

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
// Struct offsets for the fentry and kprobe tiers, from this kernel's BTF.
#[unsafe(no_mangle)]
static SK_STATE_OFFSET: Global<u32> = Global::new(18);
#[unsafe(no_mangle)]
static TCP_SRTT_OFFSET: Global<u32> = Global::new(0);

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

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
    on_transition(skaddr, old, new);
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
    on_transition(sk, sk_state(sk), state);
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

#[inline(always)]
fn on_transition(skaddr: u64, old: i32, new: i32) {
    if (0..TCP_STATES as i32).contains(&old) && (0..TCP_STATES as i32).contains(&new) {
        let index = old as u32 * TCP_STATES + new as u32;
        if let Some(n) = TCP_TRANSITIONS.get_ptr_mut(index) {
            // SAFETY: this CPU's slot.
            unsafe { *n += 1 };
        }
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match (old, new) {
        (_, TCP_SYN_SENT) => {
            if TCP_CONNECT_START.insert(skaddr, now, 0).is_err() {
                count(TCP_CONNECT_MAP_FULL);
            }
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            let start = TCP_CONNECT_START.get_ptr(skaddr).map(|p| {
                // SAFETY: from a successful lookup, copied before the delete.
                unsafe { *p }
            });
            let _ = TCP_CONNECT_START.remove(skaddr);
            if let (Some(start), Some(stats)) = (start, stats()) {
                let latency = now.saturating_sub(start);
                stats.connects += 1;
                stats.connect_latency_sum_ns += latency;
                if let Some(slot) = stats.connect_latency_slots.get_mut(latency_slot(latency)) {
                    *slot += 1;
                }
            }
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let _ = TCP_CONNECT_START.remove(skaddr);
            if let Some(stats) = stats() {
                stats.connect_failures += 1;
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

counting_programs!(
    retransmits,
    sonde_tcp_retransmit,
    "tcp",
    "tcp_retransmit_skb",
    sonde_tcp_retransmit_fentry,
    "tcp_retransmit_skb",
    sonde_tcp_retransmit_kprobe
);
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
        rtt_sample(srtt_us);
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
        rtt_sample(srtt >> 3);
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

#[inline(always)]
fn rtt_sample(srtt_us: u32) {
    if let Some(stats) = stats() {
        let us = u64::from(srtt_us);
        stats.rtt_samples += 1;
        stats.rtt_sum_us += us;
        if let Some(slot) = stats.rtt_slots.get_mut(latency_slot(us * 1000)) {
            *slot += 1;
        }
    }
}
