//! Clocks, read in one place: wall-clock seconds and milliseconds for
//! status output and events, CLOCK_MONOTONIC (the clock the kernel
//! programs stamp with bpf_ktime_get_ns()) and the agent's own CPU time.
//! Every `clock_gettime` goes through [`clock`].

use std::time::{Duration, SystemTime};

/// One `clock_gettime(2)`; None when the kernel refuses the clock.
fn clock(id: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads (0 if it
/// cannot be read, which Linux never does).
pub fn monotonic_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC).map_or(0, |d| {
        d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
    })
}

/// The agent's CPU time so far (all threads, user and system), in
/// seconds. CLOCK_PROCESS_CPUTIME_ID is the scheduler's exact runtime:
/// /proc/self/stat's clock ticks are too coarse for one short cycle.
pub fn process_cpu_seconds() -> Option<f64> {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
        .map(|d| d.as_secs() as f64 + f64::from(d.subsec_nanos()) / 1e9)
}

/// Seconds since the Unix epoch, for status output.
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
        assert!(process_cpu_seconds().is_some_and(|s| s >= 0.0));
        assert!(unix_seconds(SystemTime::now()) > 1.0e9);
        assert!(now_ms() > 1_000_000_000_000);
    }
}
