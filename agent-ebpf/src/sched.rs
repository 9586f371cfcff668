//! Run-queue latency: a task becomes runnable (woken, or preempted while
//! still runnable) and later gets a CPU; the wait is recorded in a log2
//! histogram. Two tiers: raw tracepoints reading `task_struct` fields at
//! offsets from this kernel's BTF, and classic tracepoints reading record
//! fields at offsets from this kernel's tracepoint formats. The raw tier
//! also has the task itself, so it records the wait by the task's cgroup
//! (the classic records carry no cgroup).

use agent_common::{
    config::CFG_RUNQ_PER_CGROUP,
    counters::RUNQ_MAP_FULL,
    sched::{MAX_RUNNABLE, MAX_RUNQ_CGROUPS, RunqStats},
    syscalls::latency_slot,
};
use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::maps::{config, count};

#[map(name = "RUNQ_STATS")]
static RUNQ_STATS: PerCpuArray<RunqStats> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "RUNQ_START")]
static RUNQ_START: HashMap<u32, u64> = HashMap::with_max_entries(MAX_RUNNABLE, 0);

#[map(name = "RUNQ_CGROUPS")]
static RUNQ_CGROUPS: LruPerCpuHashMap<u64, RunqStats> =
    LruPerCpuHashMap::with_max_entries(MAX_RUNQ_CGROUPS, 0);

#[unsafe(no_mangle)]
static TASK_PID_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_STATE_OFFSET: Global<u32> = Global::new(0);
/// The chain from a task to its cgroup v2 id (BTF offsets; u32::MAX:
/// unknown, no per-cgroup waits): `task_struct.cgroups` (a `css_set *`),
/// `css_set.dfl_cgrp` (a `cgroup *`), `cgroup.kn` (a `kernfs_node *`),
/// `kernfs_node.id` (the id bpf_get_current_cgroup_id returns: the cgroup
/// directory's inode).
#[unsafe(no_mangle)]
static TASK_CGROUPS_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static CSS_SET_DFL_CGRP_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static CGROUP_KN_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_WAKEUP_PID: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static TP_SWITCH_PREV_PID: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static TP_SWITCH_PREV_STATE: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
static TP_SWITCH_NEXT_PID: Global<u32> = Global::new(56);

/// The switch record's prev_state: 0 is TASK_RUNNING; a preempted task is
/// reported as TASK_REPORT_MAX (0x100). Either way the task is still
/// runnable; any bit in the low byte means it went to sleep or exited.
const SLEEPING_STATES: i64 = 0xff;

#[inline(always)]
fn runnable(pid: u32) {
    if pid == 0 {
        return; // the idle task
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if RUNQ_START.insert(pid, now, 0).is_err() {
        count(RUNQ_MAP_FULL);
    }
}

/// The task got a CPU: records its wait, if it was waiting; returns the
/// wait (ns).
#[inline(always)]
fn running(pid: u32) -> Option<u64> {
    let start = RUNQ_START.get_ptr(pid)?;
    // SAFETY: from a successful lookup, copied before the delete.
    let start = unsafe { *start };
    let _ = RUNQ_START.remove(pid);
    // SAFETY: helper without preconditions.
    let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(start);
    if let Some(stats) = RUNQ_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        record(unsafe { &mut *stats }, latency);
    }
    Some(latency)
}

#[inline(always)]
fn record(stats: &mut RunqStats, latency: u64) {
    stats.samples += 1;
    stats.sum_ns += latency;
    if let Some(slot) = stats.slots.get_mut(latency_slot(latency)) {
        *slot += 1;
    }
}

/// Reads the kernel pointer (or id) at `base + offset`.
#[inline(always)]
fn follow(base: u64, offset: u32) -> Option<u64> {
    if base == 0 || offset == u32::MAX {
        return None;
    }
    // SAFETY: kernel pointer read with the probe helper.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }.ok()
}

/// The task's cgroup v2 id, through the BTF chain.
#[inline(always)]
fn task_cgroup(task: u64) -> Option<u64> {
    let css_set = follow(task, TASK_CGROUPS_OFFSET.load())?;
    let cgroup = follow(css_set, CSS_SET_DFL_CGRP_OFFSET.load())?;
    let kn = follow(cgroup, CGROUP_KN_OFFSET.load())?;
    follow(kn, KERNFS_NODE_ID_OFFSET.load())
}

/// Adds a wait of `task` to its cgroup's histogram (when turned on).
#[inline(always)]
fn running_in_cgroup(task: u64, latency: u64) {
    if config(CFG_RUNQ_PER_CGROUP) == 0 {
        return;
    }
    let Some(id) = task_cgroup(task) else {
        return;
    };
    if RUNQ_CGROUPS.get_ptr_mut(id).is_none() {
        // The LRU makes room: an insert fails only on a kernel error.
        let _ = RUNQ_CGROUPS.insert(id, RunqStats::default(), 0);
    }
    if let Some(stats) = RUNQ_CGROUPS.get_ptr_mut(id) {
        // SAFETY: this CPU's copy of the value.
        record(unsafe { &mut *stats }, latency);
    }
}

/// `task_struct.pid` of a task pointer (BTF offset).
#[inline(always)]
fn task_pid(task: u64) -> u32 {
    // SAFETY: kernel pointer read with the probe helper.
    unsafe { bpf_probe_read_kernel((task + u64::from(TASK_PID_OFFSET.load())) as *const u32) }
        .unwrap_or(0)
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sonde_runq_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    runnable(task_pid(ctx.arg(0)));
    0
}

/// sched_switch(bool preempt, task_struct *prev, task_struct *next, ...).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sonde_runq_switch_raw(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    // SAFETY: kernel pointer read with the probe helper (BTF offset).
    let state: u32 = unsafe {
        bpf_probe_read_kernel((prev + u64::from(TASK_STATE_OFFSET.load())) as *const u32)
    }
    .unwrap_or(1);
    if preempt & 1 != 0 || state == 0 {
        runnable(task_pid(prev));
    }
    if let Some(latency) = running(task_pid(next)) {
        running_in_cgroup(next, latency);
    }
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sonde_runq_wakeup_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from this kernel's format file (same in sched_wakeup
    // and sched_wakeup_new, which the loader checks).
    if let Ok(pid) = unsafe { ctx.read_at::<i32>(TP_WAKEUP_PID.load() as usize) } {
        runnable(pid as u32);
    }
    0
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sonde_runq_switch_tp(ctx: TracePointContext) -> u32 {
    // SAFETY (all reads): offsets from this kernel's format file.
    let fields = unsafe {
        (
            ctx.read_at::<i32>(TP_SWITCH_PREV_PID.load() as usize),
            ctx.read_at::<i64>(TP_SWITCH_PREV_STATE.load() as usize),
            ctx.read_at::<i32>(TP_SWITCH_NEXT_PID.load() as usize),
        )
    };
    let (Ok(prev), Ok(state), Ok(next)) = fields else {
        return 0;
    };
    if state & SLEEPING_STATES == 0 {
        runnable(prev as u32);
    }
    let _ = running(next as u32);
    0
}
