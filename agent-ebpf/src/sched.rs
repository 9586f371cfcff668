//! Run-queue latency: a task becomes runnable (woken, or preempted while
//! still runnable) and later gets a CPU; the wait is recorded in a log2
//! histogram. Two tiers: raw tracepoints, keyed by the `task_struct`
//! pointers their arguments carry (no read of the task on the hot path),
//! and classic tracepoints, keyed by the pids in their records (fields at
//! offsets from this kernel's tracepoint formats). The raw tier also
//! records the wait by the task's cgroup (the classic records carry no
//! cgroup): when the task leaves the CPU again, as the current task, whose
//! cgroup id one helper call gives; with it, how long that run held the
//! CPU (what names the cgroup that takes the CPUs, not only those that
//! wait for them). Waits that end with the CPU switching from another task
//! are also summed apart, node-wide: those tasks queued behind others,
//! where the rest waited for an idle CPU to wake.

use agent_common::{
    config::CFG_RUNQ_PER_CGROUP,
    counters::RUNQ_MAP_FULL,
    sched::{MAX_RUNNABLE, MAX_RUNQ_CGROUPS, RUNQ_CGROUP_SLOTS, RunqCgroupSlot, RunqStats},
    syscalls::latency_slot,
};
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_get_current_cgroup_id,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    maps::{config, count},
    record::field,
};

#[map(name = "RUNQ_STATS")]
static RUNQ_STATS: PerCpuArray<RunqStats> = PerCpuArray::with_max_entries(1, 0);

/// Since when each waiting task waits (0: it is not waiting), by
/// `task_struct` pointer (raw tier) or pid (tracepoint tier). A task's
/// entry stays while it lives and is rewritten in place: a wait costs two
/// stores, not a hash update and a delete (each a bucket lock and a
/// free-list operation). It goes when the task exits; the LRU makes room
/// for new tasks from those not seen for longest (sleeping ones: an entry
/// in use was touched at the task's wakeup), so an insert does not fail.
#[map(name = "RUNQ_START")]
static RUNQ_START: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_RUNNABLE, 0);

/// The task running on this CPU after a measured wait: the wait, added
/// to its cgroup's histogram, and the run, added to its cgroup's CPU
/// time, when it leaves the CPU (raw tier).
#[derive(Clone, Copy)]
struct Pending {
    /// ns + 1; 0: none.
    wait: u64,
    /// When it got the CPU.
    since: u64,
}

#[map(name = "RUNQ_PENDING")]
static RUNQ_PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "RUNQ_CGROUPS")]
static RUNQ_CGROUPS: LruPerCpuHashMap<u64, RunqStats> =
    LruPerCpuHashMap::with_max_entries(MAX_RUNQ_CGROUPS, 0);

#[map(name = "RUNQ_CGROUP_SLOTS")]
static RUNQ_CGROUP_SLOTS_MAP: PerCpuArray<RunqCgroupSlot> =
    PerCpuArray::with_max_entries(RUNQ_CGROUP_SLOTS, 0);

#[unsafe(no_mangle)]
static TASK_STATE_OFFSET: Global<u32> = Global::new(0);
/// 1 where sched_switch passes `prev_state` as its fourth argument
/// (5.18 and later); 0: read it from the task (TASK_STATE_OFFSET). A
/// read-only global the verifier knows, so before 5.18 it never sees the
/// fourth argument read (the attach would refuse a program that reads
/// past the tracepoint's arguments).
#[unsafe(no_mangle)]
static SWITCH_STATE_ARG: Global<u32> = Global::new(0);
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
/// The same for a task that exits: EXIT_DEAD or EXIT_ZOMBIE.
const EXITING_STATES: i64 = 0x30;

/// The task (`key`: pointer or pid) became runnable at `now`.
#[inline(always)]
fn runnable(key: u64, now: u64) {
    if let Some(start) = RUNQ_START.get_ptr_mut(key) {
        // SAFETY: the entry's value; the task's run queue lock orders its
        // wakeup, its switches and so every access to its entry.
        unsafe { *start = now };
    } else if RUNQ_START.insert(key, now, 0).is_err() {
        count(RUNQ_MAP_FULL);
    }
}

/// The task left the CPU for the last time.
#[inline(always)]
fn exited(key: u64) {
    let _ = RUNQ_START.remove(key);
}

/// The task got a CPU at `now`, from another task (`behind`) or from the
/// idle task: records its wait, if it was waiting; returns the wait (ns).
#[inline(always)]
fn running(key: u64, now: u64, behind: bool) -> Option<u64> {
    let entry = RUNQ_START.get_ptr_mut(key)?;
    // SAFETY: the entry's value (see `runnable`).
    let start = unsafe { core::mem::replace(&mut *entry, 0) };
    if start == 0 {
        return None;
    }
    let latency = now.saturating_sub(start);
    if let Some(stats) = RUNQ_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let stats = unsafe { &mut *stats };
        record(stats, latency);
        if behind {
            stats.behind_ns += latency;
        }
    }
    Some(latency)
}

/// The monotonic clock (ns).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn record(stats: &mut RunqStats, latency: u64) {
    stats.samples += 1;
    stats.sum_ns += latency;
    if let Some(slot) = stats.slots.get_mut(latency_slot(latency)) {
        *slot += 1;
    }
}

/// The current task leaves the CPU at `now`: adds the wait it had before
/// it got the CPU, if any, to its cgroup's histogram, and the run since to
/// its cgroup's CPU time (when turned on). The task is current now, so one
/// helper gives its cgroup id; at the switch that gave it the CPU it was
/// not, and its id took four probe reads.
#[inline(always)]
fn leaving_cpu(now: u64) {
    let Some(pending) = RUNQ_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; sched_switch does not nest on a CPU.
    let pending = unsafe { &mut *pending };
    if pending.wait == 0 {
        return;
    }
    let latency = pending.wait - 1;
    let run = now.saturating_sub(pending.since);
    pending.wait = 0;
    if config(CFG_RUNQ_PER_CGROUP) == 0 {
        return;
    }
    // SAFETY: helper without preconditions.
    let id = unsafe { bpf_get_current_cgroup_id() };
    if let Some(stats) = cgroup_slot(id) {
        record(stats, latency);
        stats.run_ns += run;
        return;
    }
    if RUNQ_CGROUPS.get_ptr_mut(id).is_none() {
        // The LRU makes room: an insert fails only on a kernel error.
        let _ = RUNQ_CGROUPS.insert(id, RunqStats::default(), 0);
    }
    if let Some(stats) = RUNQ_CGROUPS.get_ptr_mut(id) {
        // SAFETY: this CPU's copy of the value.
        let stats = unsafe { &mut *stats };
        record(stats, latency);
        stats.run_ns += run;
    }
}

/// This CPU's slot of cgroup `id`, claimed if free; None if another
/// cgroup holds it. An array lookup the verifier inlines, where the hash
/// lookup is a call (~100 ns per wait measured under stress-ng).
#[inline(always)]
fn cgroup_slot(id: u64) -> Option<&'static mut RunqStats> {
    if id == 0 {
        return None;
    }
    let slot = RUNQ_CGROUP_SLOTS_MAP.get_ptr_mut(id as u32 & (RUNQ_CGROUP_SLOTS - 1))?;
    // SAFETY: this CPU's slot; sched_switch does not nest on a CPU.
    let slot = unsafe { &mut *slot };
    if slot.id == 0 {
        slot.id = id;
    }
    (slot.id == id).then_some(&mut slot.stats)
}

/// `task_struct.__state` of a task that exits (TASK_DEAD).
const TASK_DEAD: u32 = 0x80;

/// `prev`'s state as it leaves the CPU (0: TASK_RUNNING, still runnable).
#[inline(always)]
fn prev_state(ctx: &RawTracePointContext, prev: u64) -> u32 {
    let state: u64 = if SWITCH_STATE_ARG.load() != 0 {
        ctx.arg(3)
    } else {
        // SAFETY: kernel pointer read with the probe helper (BTF offset).
        unsafe { bpf_probe_read_kernel((prev + u64::from(TASK_STATE_OFFSET.load())) as *const u32) }
            .map_or(1, u64::from)
    };
    state as u32
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sonde_runq_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    runnable(ctx.arg(0), now());
    0
}

/// sched_switch(bool preempt, task_struct *prev, task_struct *next
/// [, unsigned int prev_state since 5.18]), with `prev` current.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sonde_runq_switch_raw(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let now = now();
    leaving_cpu(now);
    // The idle task (pid 0) is never waited for, and a task that gets the
    // CPU from it did not wait behind another.
    let from_task = bpf_get_current_pid_tgid() as u32 != 0;
    if from_task {
        let state = prev_state(&ctx, prev);
        if preempt & 1 != 0 || state == 0 {
            runnable(prev, now);
        } else if state & TASK_DEAD != 0 {
            exited(prev);
        }
    }
    if let Some(latency) = running(next, now, from_task)
        && let Some(pending) = RUNQ_PENDING.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot.
        unsafe {
            *pending = Pending {
                wait: latency + 1,
                since: now,
            }
        };
    }
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sonde_runq_wakeup_tp(ctx: TracePointContext) -> u32 {
    // Offset from this kernel's format file (same in sched_wakeup and
    // sched_wakeup_new, which the loader checks).
    if let Ok(pid) = field!(&ctx, i32, TP_WAKEUP_PID.load(), 24)
        && pid != 0
    {
        runnable(u64::from(pid as u32), now());
    }
    0
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sonde_runq_switch_tp(ctx: TracePointContext) -> u32 {
    // Offsets from this kernel's format file (the same since 4.x).
    let fields = (
        field!(&ctx, i32, TP_SWITCH_PREV_PID.load(), 24),
        field!(&ctx, i64, TP_SWITCH_PREV_STATE.load(), 32),
        field!(&ctx, i32, TP_SWITCH_NEXT_PID.load(), 56),
    );
    let (Ok(prev), Ok(state), Ok(next)) = fields else {
        return 0;
    };
    let now = now();
    // The idle task (pid 0) is never waited for.
    if prev != 0 {
        if state & SLEEPING_STATES == 0 {
            runnable(u64::from(prev as u32), now);
        } else if state & EXITING_STATES != 0 {
            exited(u64::from(prev as u32));
        }
    }
    let _ = running(u64::from(next as u32), now, prev != 0);
    0
}
