//! TCP lifecycle on the `sock:inet_sock_set_state` and `tcp:*` tracepoints:
//! handshake latency (SYN_SENT → ESTABLISHED), failed handshakes, passive
//! opens, state transitions, retransmits, resets sent and received, and
//! smoothed-RTT samples. Field offsets come from this kernel's tracepoint
//! formats, set by the loader; a tracepoint this kernel lacks is simply
//! not attached (and reported).

use agent_common::{
    config::CFG_TCP_RTT,
    counters::TCP_CONNECT_MAP_FULL,
    syscalls::latency_slot,
    tcp::{MAX_CONNECTS_IN_FLIGHT, TCP_STATES, TcpStats},
};
use aya_ebpf::{
    Global,
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
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
    Ok(())
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn sonde_tcp_retransmit(_ctx: TracePointContext) -> u32 {
    if let Some(stats) = stats() {
        stats.retransmits += 1;
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn sonde_tcp_send_reset(_ctx: TracePointContext) -> u32 {
    if let Some(stats) = stats() {
        stats.resets_sent += 1;
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn sonde_tcp_receive_reset(_ctx: TracePointContext) -> u32 {
    if let Some(stats) = stats() {
        stats.resets_received += 1;
    }
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
    let Ok(srtt_us) = (unsafe { ctx.read_at::<u32>(TP_PROBE_SRTT.load() as usize) }) else {
        return 0;
    };
    if let Some(stats) = stats() {
        let us = u64::from(srtt_us);
        stats.rtt_samples += 1;
        stats.rtt_sum_us += us;
        if let Some(slot) = stats.rtt_slots.get_mut(latency_slot(us * 1000)) {
            *slot += 1;
        }
    }
    0
}
