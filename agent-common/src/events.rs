//! Ring-buffer events and their loss accounting.
//!
//! Every event starts with an [`EventHeader`] carrying a stable kind id, so
//! one decoder reads any ring. Each ring has a slot in `RING_STATS`
//! (per CPU): `produced` counts every attempt to emit, `lost` counts the
//! reserve failures. User space counts what it received, and
//! `received + lost == produced` once the ring is drained.

/// Name of the `PerCpuArray<RingStats>` map, indexed by ring id.
pub const RING_STATS_MAP: &str = "RING_STATS";
/// Name of the token-bucket state map used to rate-limit new-flow events.
pub const FLOW_EVENT_BUCKET_MAP: &str = "FLOW_EVENT_BUCKET";

/// Ring carrying [`SlowSyscallEvent`]s.
pub const RING_SYSCALL: u32 = 0;
/// Ring carrying [`FlowEvent`]s.
pub const RING_FLOW: u32 = 1;
/// Ring carrying [`ProcessExecEvent`]s and [`ProcessExitEvent`]s.
pub const RING_PROCESS: u32 = 2;
/// Number of rings (slots in `RING_STATS`).
pub const RING_COUNT: u32 = 3;
/// `(ring id, map name, label)` for every ring.
pub const RINGS: &[(u32, &str, &str)] = &[
    (RING_SYSCALL, "SYSCALL_EVENTS", "syscall"),
    (RING_FLOW, "FLOW_EVENTS", "flow"),
    (RING_PROCESS, "PROCESS_EVENTS", "process"),
];

/// Event kind id of [`SlowSyscallEvent`].
pub const EVENT_SLOW_SYSCALL: u32 = 1;
/// Event kind id of [`FlowEvent`].
pub const EVENT_NEW_FLOW: u32 = 2;
/// Event kind id of [`ProcessExecEvent`].
pub const EVENT_PROCESS_EXEC: u32 = 3;
/// Event kind id of [`ProcessExitEvent`].
pub const EVENT_PROCESS_EXIT: u32 = 4;
/// Bytes of an exec'd file name kept in an event.
pub const FILENAME_LEN: usize = 128;

/// Length of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RingStats {
    /// Events the kernel tried to emit.
    pub produced: u64,
    /// Events dropped because the ring had no room.
    pub lost: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenBucket {
    /// Tokens available, scaled by 1e9 (one token = 1_000_000_000).
    pub tokens: u64,
    /// Last refill time (bpf_ktime_get_ns).
    pub last_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// One of the `EVENT_*` ids.
    pub kind: u32,
    /// CPU that emitted the event.
    pub cpu: u32,
    /// bpf_ktime_get_ns() at emission (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

/// A syscall that took longer than the configured threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SlowSyscallEvent {
    pub header: EventHeader,
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub syscall_id: u32,
    pub _pad: u32,
    pub latency_ns: u64,
    pub ret: i64,
    pub comm: [u8; COMM_LEN],
}

/// The first packet of a flow the kernel had not seen (or had evicted).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowEvent {
    pub header: EventHeader,
    pub key: crate::net::FlowKey,
    /// Length of the first packet (L2 frame length).
    pub bytes: u32,
    pub _pad: u32,
}

/// Who a process is, as its exec and exit events both begin: decoders
/// read it from either.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessInfo {
    pub header: EventHeader,
    pub pid: u32,
    /// Parent's tgid (0 where the kernel's BTF is missing).
    pub ppid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A process exec'd a new program.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessExecEvent {
    pub info: ProcessInfo,
    /// NUL-terminated path passed to exec.
    pub filename: [u8; FILENAME_LEN],
}

/// A process (its last thread) exited. A record of its own, without the
/// exec's file name: on the exit hook the ring buffer's cost grows with
/// the record. 56 bytes instead of 184 took the exit program from 1,089
/// to 694 ns per run (`cargo xtask bench --only families`, 5 rounds).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessExitEvent {
    pub info: ProcessInfo,
    /// Exit code as `wait` reports it.
    pub exit_code: u32,
    pub _pad: u32,
}
