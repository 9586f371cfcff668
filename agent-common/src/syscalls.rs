//! Per-syscall aggregation done in the kernel: counts, errors and a log2
//! latency histogram, per CPU, indexed by syscall id.

/// `PerCpuArray<SyscallStats>` indexed by syscall id.
pub const SYSCALL_STATS_MAP: &str = "SYSCALL_STATS";
/// `HashMap<u32 tid, SyscallStart>`: in-flight syscalls of threads that
/// were switched out before their syscall returned.
pub const SYSCALL_START_MAP: &str = "SYSCALL_START";
/// `Array<u32>` indexed by syscall id: non-zero means "never report as slow"
/// (syscalls whose job is to block, such as epoll_wait or futex).
pub const SLOW_SYSCALL_IGNORE_MAP: &str = "SLOW_SYSCALL_IGNORE";

/// Syscall ids tracked (x86_64 and aarch64 tables stay well below this).
pub const MAX_SYSCALLS: u32 = 512;

/// `LruPerCpuHashMap<u32 /* tgid */, ProcessSyscalls>`: syscalls per
/// process, filled only while `CFG_SYSCALLS_PER_PROCESS` is on.
pub const SYSCALL_PROCESSES_MAP: &str = "SYSCALL_PROCESSES";
/// Processes tracked at once (least recently used ones make room).
pub const MAX_SYSCALL_PROCESSES: u32 = 1024;

/// Syscalls one process made (and how many failed) while counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSyscalls {
    pub calls: u64,
    pub errors: u64,
}
/// Threads with a syscall in flight that can be tracked at once.
pub const MAX_INFLIGHT: u32 = 65536;

/// Latency histogram slots. Slot 0 holds latencies below 2^10 ns (~1 µs);
/// slot k (1 ≤ k < LATENCY_SLOTS - 1) holds [2^(9+k), 2^(10+k)) ns; the last
/// slot holds everything from 2^(9 + LATENCY_SLOTS - 1) ns (~34 s) up.
pub const LATENCY_SLOTS: usize = 27;
/// log2 of the upper bound (ns) of slot 0.
pub const LATENCY_FIRST_BOUND_LOG2: u32 = 10;

/// Slot of a latency in ns.
///
/// Runs on every syscall exit, so it is written for the BPF instruction set,
/// which has no count-leading-zeros: most syscalls return within a
/// microsecond and take the first test; the rest take a six-step binary
/// search for floor(log2) instead of LLVM's ~45-instruction ctlz expansion.
#[inline(always)]
pub fn latency_slot(ns: u64) -> usize {
    if ns < 1 << LATENCY_FIRST_BOUND_LOG2 {
        return 0;
    }
    let mut v = ns;
    let mut log2 = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        log2 += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        log2 += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        log2 += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        log2 += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        log2 += 2;
    }
    if v >= 1 << 1 {
        log2 += 1;
    }
    let slot = (log2 + 1 - LATENCY_FIRST_BOUND_LOG2) as usize;
    if slot >= LATENCY_SLOTS {
        LATENCY_SLOTS - 1
    } else {
        slot
    }
}

/// Upper bound in ns of a (non-last) slot.
pub const fn latency_slot_upper_ns(slot: usize) -> u64 {
    1u64 << (LATENCY_FIRST_BOUND_LOG2 as usize + slot)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallStats {
    /// Syscalls made: counted when they return (with their latency), or at
    /// entry for those that never return (exit, exit_group), or when their
    /// start could not be recorded (counted in `SYSCALL_START_MAP_FULL`).
    pub count: u64,
    /// Exits with a negative return value (an errno).
    pub errors: u64,
    /// Sum of measured latencies, ns.
    pub latency_sum_ns: u64,
    /// Measured latencies by slot; their sum is the number of exits whose
    /// latency was measured (entry seen by the agent).
    pub latency_slots: [u64; LATENCY_SLOTS],
}

impl SyscallStats {
    /// Exits whose latency was measured: derived, so the kernel program
    /// has one counter less to bump per syscall.
    pub fn timed(&self) -> u64 {
        self.latency_slots.iter().sum()
    }
}

/// A syscall in flight: when it started (or `UNTIMED`), which one, and
/// (once parked in the hash map) on which thread. `ts_ns == 0` marks an
/// empty per-CPU slot. `seq` counts this CPU's syscalls, for sampling.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallStart {
    pub ts_ns: u64,
    pub id: u32,
    pub tid: u32,
    pub seq: u64,
}

/// `SyscallStart::ts_ns` of a syscall that is counted but not timed
/// (latency sampling).
pub const UNTIMED: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_the_range() {
        assert_eq!(latency_slot(0), 0);
        assert_eq!(latency_slot(1023), 0);
        assert_eq!(latency_slot(1024), 1);
        assert_eq!(latency_slot(2047), 1);
        assert_eq!(latency_slot(2048), 2);
        assert_eq!(latency_slot(u64::MAX), LATENCY_SLOTS - 1);
        for slot in 0..LATENCY_SLOTS - 1 {
            let upper = latency_slot_upper_ns(slot);
            assert_eq!(latency_slot(upper - 1), slot);
            assert_eq!(latency_slot(upper), slot + 1);
        }
    }

    #[test]
    fn binary_search_agrees_with_leading_zeros() {
        let reference = |ns: u64| {
            let log2 = 63u32.saturating_sub((ns | 1).leading_zeros());
            ((log2 + 1).saturating_sub(LATENCY_FIRST_BOUND_LOG2) as usize).min(LATENCY_SLOTS - 1)
        };
        for shift in 0..64 {
            for ns in [
                1u64 << shift,
                (1u64 << shift) - 1,
                (1u64 << shift) + 1,
                (1u64 << shift) | 0x5a5a,
            ] {
                assert_eq!(latency_slot(ns), reference(ns), "{ns}");
            }
        }
    }
}
