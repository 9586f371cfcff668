//! Runtime configuration that user space writes into the `CONFIG` array map
//! and the kernel programs read on every event. Values are `u64`, indexed by
//! the constants below, so the daemon can retune the kernel side (and the
//! MAPE-K loop can later) without reloading any program.

/// Name of the `Array<u64>` map holding runtime settings.
pub const CONFIG_MAP: &str = "CONFIG";

/// Syscalls slower than this (ns) emit a `SlowSyscallEvent`; 0 disables.
pub const CFG_SLOW_SYSCALL_NS: u32 = 0;
/// New-flow events allowed per second per CPU (token bucket refill rate).
pub const CFG_FLOW_EVENTS_PER_SEC: u32 = 1;
/// Burst size of the new-flow event token bucket.
pub const CFG_FLOW_EVENTS_BURST: u32 = 2;
/// Thread-group id whose slow syscalls are never reported (the agent itself,
/// so that its own reads of the ring buffer cannot feed back into it).
pub const CFG_IGNORE_TGID: u32 = 3;

/// Non-zero: record smoothed-RTT samples from `tcp:tcp_probe`.
pub const CFG_TCP_RTT: u32 = 4;

/// Time one syscall in N (0 or 1: every one). Untimed syscalls are still
/// counted, with their errors; only their latency is not measured.
pub const CFG_SYSCALL_SAMPLE_EVERY: u32 = 5;

/// Non-zero while the blocklist holds an entry: the ingress programs only
/// look a packet's source up then, so with enforce mode off (or nothing
/// blocked) the packet path costs one array read more, no hash lookup.
/// User space sets it after inserting the first entry and clears it before
/// removing the last.
pub const CFG_BLOCKLIST_ACTIVE: u32 = 6;

/// Non-zero: count syscalls per process (`SYSCALL_PROCESSES`). The MAPE-K
/// loop turns it on for a few cycles when a syscall anomaly opens, to name
/// the process behind it; off, it costs one array read per syscall.
pub const CFG_SYSCALLS_PER_PROCESS: u32 = 7;

/// Non-zero: also record run-queue waits by cgroup (`RUNQ_CGROUPS`); off,
/// it costs one array read per switch.
pub const CFG_RUNQ_PER_CGROUP: u32 = 8;

/// Non-zero: also count drops of IP packets by (reason, source,
/// destination) (`DROP_PEERS`). The MAPE-K loop turns it on for a few
/// cycles when packet loss opens, to name whose packets were dropped; off,
/// a drop costs one array read more.
pub const CFG_DROP_PEERS: u32 = 9;

/// Drops counted by interface: one in N, chosen at random, each counted N
/// times (0 or 1: every drop, exactly). A power of two, which user space
/// raises only while drops are many (`[drops] exact_device_drops_per_second`);
/// the count by reason stays exact whatever it is.
pub const CFG_DROP_DEVICE_SAMPLE_PERIOD: u32 = 10;

/// Number of slots in `CONFIG`.
pub const CONFIG_LEN: u32 = 11;
