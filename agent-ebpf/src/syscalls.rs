//! Syscall telemetry on `raw_syscalls:sys_enter` / `sys_exit`.
//!
//! Two attachments of the same logic: raw tracepoints (cheaper: arguments
//! come straight from `TP_PROTO`) and classic tracepoints as the fallback,
//! whose field offsets the loader reads from the running kernel's tracepoint
//! format and passes in as globals. Aggregation (count, errors, log2 latency
//! histogram) happens here, per CPU; only syscalls slower than the configured
//! threshold leave the kernel as events.

use agent_common::{
    config::{
        CFG_IGNORE_TGID, CFG_SLOW_SYSCALL_NS, CFG_SYSCALL_SAMPLE_EVERY, CFG_SYSCALLS_PER_PROCESS,
    },
    counters::{SYSCALL_ID_OUT_OF_RANGE, SYSCALL_START_MAP_FULL},
    events::{EVENT_SLOW_SYSCALL, EventHeader, RING_SYSCALL, SlowSyscallEvent},
    syscalls::{
        MAX_INFLIGHT, MAX_SYSCALL_PROCESSES, MAX_SYSCALLS, ProcessSyscalls, SyscallStart,
        SyscallStats, UNTIMED, latency_slot,
    },
};
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::bpf_get_current_cgroup_id,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    events::{emit, flush},
    maps::{config, count},
    process::current_comm,
};

#[map(name = "SYSCALL_STATS")]
static SYSCALL_STATS: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(MAX_SYSCALLS, 0);

#[map(name = "SYSCALL_START")]
static SYSCALL_START: HashMap<u32, SyscallStart> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

/// The syscall in flight of the thread running on this CPU, if any.
#[map(name = "SYSCALL_INFLIGHT")]
static SYSCALL_INFLIGHT: PerCpuArray<SyscallStart> = PerCpuArray::with_max_entries(1, 0);

/// Syscalls per process, while the MAPE-K loop asks who is behind a storm.
#[map(name = "SYSCALL_PROCESSES")]
static SYSCALL_PROCESSES: LruPerCpuHashMap<u32, ProcessSyscalls> =
    LruPerCpuHashMap::with_max_entries(MAX_SYSCALL_PROCESSES, 0);

#[map(name = "SLOW_SYSCALL_IGNORE")]
static SLOW_SYSCALL_IGNORE: Array<u32> = Array::with_max_entries(MAX_SYSCALLS, 0);

/// Syscalls that never return (exit, exit_group): no start is recorded for
/// them, or their entries would never be removed. Set by the loader from the
/// running architecture's table; u32::MAX means "none".
#[unsafe(no_mangle)]
static SYSCALL_NR_EXIT: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static SYSCALL_NR_EXIT_GROUP: Global<u32> = Global::new(u32::MAX);

/// Offsets of `id` in the classic sys_enter record and of `ret` in the
/// sys_exit record, read by the loader from
/// `events/raw_syscalls/sys_{enter,exit}/format`.
#[unsafe(no_mangle)]
static TP_SYS_ENTER_ID_OFFSET: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static TP_SYS_EXIT_RET_OFFSET: Global<u32> = Global::new(16);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sonde_sys_enter_raw(ctx: RawTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    on_enter(id);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sonde_sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    on_exit(ret);
    flush::<SlowSyscallEvent, _>(&ctx, RING_SYSCALL);
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sonde_sched_switch_raw(_ctx: RawTracePointContext) -> i32 {
    on_switch();
    0
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sonde_sched_switch_tp(_ctx: TracePointContext) -> u32 {
    on_switch();
    0
}

#[tracepoint(category = "raw_syscalls", name = "sys_enter")]
pub fn sonde_sys_enter_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's tracepoint format.
    if let Ok(id) = unsafe { ctx.read_at::<i64>(TP_SYS_ENTER_ID_OFFSET.load() as usize) } {
        on_enter(id);
    }
    0
}

#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn sonde_sys_exit_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's tracepoint format.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(TP_SYS_EXIT_RET_OFFSET.load() as usize) } {
        on_exit(ret);
    }
    flush::<SlowSyscallEvent, _>(&ctx, RING_SYSCALL);
    0
}

#[inline(always)]
fn on_enter(id: i64) {
    if id < 0 || id >= MAX_SYSCALLS as i64 {
        count(SYSCALL_ID_OUT_OF_RANGE);
        return;
    }
    let id = id as u32;
    if id == SYSCALL_NR_EXIT.load() || id == SYSCALL_NR_EXIT_GROUP.load() {
        // Never returns: counted here, untimed.
        count_untimed(id);
        return;
    }
    let Some(slot) = SYSCALL_INFLIGHT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not run concurrently
    // with each other here (tracepoints run with preemption disabled).
    let slot = unsafe { &mut *slot };
    // No tid needed: the slot only ever holds the running thread's syscall
    // (sched_switch empties it whenever a thread leaves the CPU).
    slot.id = id;
    // Sampling: time one syscall in N on this CPU, count them all. Most of
    // the cost of timing is the two clock reads, which untimed calls skip.
    let every = config(CFG_SYSCALL_SAMPLE_EVERY);
    slot.seq = slot.seq.wrapping_add(1);
    slot.ts_ns = if every > 1 && slot.seq % every != 0 {
        UNTIMED
    } else {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    };
}

/// The outgoing thread (still `current`) leaves the CPU: park its in-flight
/// syscall, if any, in the hash map.
#[inline(always)]
fn on_switch() {
    let Some(slot) = SYSCALL_INFLIGHT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let slot = unsafe { &mut *slot };
    if slot.ts_ns == 0 {
        return;
    }
    let mut start = *slot;
    slot.ts_ns = 0;
    start.seq = 0;
    start.tid = bpf_get_current_pid_tgid() as u32;
    if SYSCALL_START.insert(start.tid, start, 0).is_err() {
        // Its latency is lost, but the call itself still counts.
        count(SYSCALL_START_MAP_FULL);
        count_untimed(start.id);
    }
}

/// Counts a syscall whose latency cannot be measured.
#[inline(always)]
fn count_untimed(id: u32) {
    if let Some(stats) = SYSCALL_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot.
        unsafe { (*stats).count += 1 };
    }
}

/// Counts one syscall of the current process (attribution zoom).
#[inline(always)]
fn count_process(ret: i64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let failed = u64::from(ret < 0);
    if let Some(p) = SYSCALL_PROCESSES.get_ptr_mut(tgid) {
        // SAFETY: this CPU's copy of the value.
        unsafe {
            (*p).calls += 1;
            (*p).errors += failed;
        }
    } else {
        let first = ProcessSyscalls {
            calls: 1,
            errors: failed,
        };
        let _ = SYSCALL_PROCESSES.insert(tgid, first, 0);
    }
}

/// Where the running thread's syscall started: this CPU's slot when the
/// thread never left the CPU, else the hash map it was parked in.
#[inline(always)]
fn take_start() -> Option<SyscallStart> {
    if let Some(slot) = SYSCALL_INFLIGHT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let slot = unsafe { &mut *slot };
        if slot.ts_ns != 0 {
            let start = *slot;
            // The sequence stays: it is this CPU's, not the call's.
            slot.ts_ns = 0;
            return Some(start);
        }
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let start = SYSCALL_START.get_ptr(tid)?;
    // SAFETY: from a successful lookup; copied out before the delete.
    let start = unsafe { *start };
    let _ = SYSCALL_START.remove(tid);
    Some(start)
}

#[inline(always)]
fn on_exit(ret: i64) {
    let Some(start) = take_start() else {
        // Entry happened before we attached, or the start map was full
        // (counted when parking it).
        return;
    };
    let id = start.id;
    if config(CFG_SYSCALLS_PER_PROCESS) != 0 {
        count_process(ret);
    }
    if start.ts_ns == UNTIMED {
        if let Some(stats) = SYSCALL_STATS.get_ptr_mut(id) {
            // SAFETY: per-CPU slot, only this CPU writes it while we run.
            let stats = unsafe { &mut *stats };
            stats.count += 1;
            if ret < 0 {
                stats.errors += 1;
            }
        }
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let latency = now.saturating_sub(start.ts_ns);
    if let Some(stats) = SYSCALL_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        let stats = unsafe { &mut *stats };
        stats.count += 1;
        if ret < 0 {
            stats.errors += 1;
        }
        stats.latency_sum_ns += latency;
        let slot = latency_slot(latency);
        if let Some(bucket) = stats.latency_slots.get_mut(slot) {
            *bucket += 1;
        }
    }
    let threshold = config(CFG_SLOW_SYSCALL_NS);
    if threshold == 0 || latency < threshold {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    if u64::from(tgid) == config(CFG_IGNORE_TGID) {
        return;
    }
    if SLOW_SYSCALL_IGNORE.get(id).copied().unwrap_or(0) != 0 {
        return;
    }
    emit::<SlowSyscallEvent>(RING_SYSCALL, |event| {
        event.header = EventHeader {
            kind: EVENT_SLOW_SYSCALL,
            // SAFETY: helper without preconditions.
            cpu: unsafe { bpf_get_smp_processor_id() },
            ts_ns: now,
        };
        event.pid = tgid;
        event.tid = tid;
        // SAFETY: helper without preconditions.
        event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        event.syscall_id = id;
        event._pad = 0;
        event.latency_ns = latency;
        event.ret = ret;
        current_comm(&mut event.comm);
    });
}
