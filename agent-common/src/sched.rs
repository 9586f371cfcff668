//! Run-queue latency: how long runnable tasks wait for a CPU (wakeup or
//! preemption → running), as a log2 histogram.

use crate::syscalls::LATENCY_SLOTS;

/// `PerCpuArray<RunqStats>`, one slot.
pub const RUNQ_STATS_MAP: &str = "RUNQ_STATS";
/// `HashMap<u64, u64 ns>`: tasks waiting for a CPU since when, by
/// `task_struct` pointer (raw tracepoints) or pid (classic ones).
pub const RUNQ_START_MAP: &str = "RUNQ_START";
/// Runnable-but-waiting tasks tracked at once.
pub const MAX_RUNNABLE: u32 = 32768;
/// `LruPerCpuHashMap<u64 cgroup id, RunqStats>`: the same waits by the
/// waiting task's cgroup (v2), cumulative; when more cgroups wait than it
/// holds, the least recently waiting one is evicted (its series restarts).
pub const RUNQ_CGROUPS_MAP: &str = "RUNQ_CGROUPS";
/// Cgroups tracked at once.
pub const MAX_RUNQ_CGROUPS: u32 = 1024;

/// `PerCpuArray<RunqCgroupSlot>`: the same waits, for the cgroups that
/// first claimed a slot (slot: the id's low bits) on a CPU, without a
/// hash lookup per wait; a cgroup finding its slot taken by another goes
/// to `RUNQ_CGROUPS`. A cgroup's waits are its sum over both maps (a
/// claimed slot is never given to another cgroup: ids are not reused).
pub const RUNQ_CGROUP_SLOTS_MAP: &str = "RUNQ_CGROUP_SLOTS";
/// Slots per CPU (a power of two).
pub const RUNQ_CGROUP_SLOTS: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RunqCgroupSlot {
    /// The cgroup's id (0: free).
    pub id: u64,
    pub stats: RunqStats,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RunqStats {
    pub samples: u64,
    pub sum_ns: u64,
    pub slots: [u64; LATENCY_SLOTS],
    /// On-CPU time (ns) of the runs that followed these waits (per
    /// cgroup only): what a cgroup took of the CPUs others waited for.
    pub run_ns: u64,
    /// The part of `sum_ns` waited behind another task (node-wide only):
    /// waits that ended with the CPU switching from a task, not from idle.
    /// The others waited for an idle CPU to wake (deep idle states, and in
    /// a VM the hypervisor to run a halted vCPU): not tasks contending.
    pub behind_ns: u64,
}
