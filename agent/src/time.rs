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

/// The CPU time of a group of threads (the HTTP server's), live and
/// exited: each thread calls [`ThreadCpu::enter`] when it starts and
/// [`ThreadCpu::leave`] before it ends; [`ThreadCpu::seconds`] reads the
/// live ones' per-thread CPU clocks (pthread_getcpuclockid) and adds what
/// the exited ones had used. The cost governor subtracts it from the
/// process's CPU, so serving requests is not counted as telemetry cost.
#[derive(Debug, Default)]
pub struct ThreadCpu {
    inner: std::sync::Mutex<ThreadCpuInner>,
}

#[derive(Debug, Default)]
struct ThreadCpuInner {
    /// (thread id, its CPU clock) of the live threads.
    live: Vec<(libc::pid_t, libc::clockid_t)>,
    /// Seconds used by the threads that left.
    retired: f64,
}

fn seconds_of(d: Duration) -> f64 {
    d.as_secs() as f64 + f64::from(d.subsec_nanos()) / 1e9
}

impl ThreadCpu {
    /// Counts the calling thread in the group.
    pub fn enter(&self) {
        let mut id: libc::clockid_t = 0;
        // SAFETY: pthread_self is always valid; valid out pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        if rc != 0 {
            return;
        }
        // SAFETY: no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.live.push((tid, id));
    }

    /// The calling thread is about to end: its CPU time moves to the
    /// retired total.
    pub fn leave(&self) {
        // SAFETY: no preconditions.
        let tid = unsafe { libc::gettid() };
        let own = clock(libc::CLOCK_THREAD_CPUTIME_ID).map_or(0.0, seconds_of);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = inner.live.iter().position(|(t, _)| *t == tid) {
            inner.live.swap_remove(i);
            inner.retired += own;
        }
    }

    /// CPU seconds (user and system) the group used so far.
    pub fn seconds(&self) -> f64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A live thread's clock stays readable until it calls leave(),
        // which takes this lock first.
        inner.retired
            + inner
                .live
                .iter()
                .filter_map(|(_, id)| clock(*id))
                .map(seconds_of)
                .sum::<f64>()
    }
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

    #[test]
    fn thread_cpu_counts_the_group_only() {
        let group = std::sync::Arc::new(ThreadCpu::default());
        let g = group.clone();
        std::thread::spawn(move || {
            g.enter();
            // Busy until this thread used 30 ms of CPU (however loaded
            // the machine is).
            let own = || clock(libc::CLOCK_THREAD_CPUTIME_ID).map_or(0.0, seconds_of);
            let mut x = 0u64;
            while own() < 0.03 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            assert!(g.seconds() >= 0.03, "{}", g.seconds());
            g.leave();
        })
        .join()
        .unwrap();
        let after = group.seconds();
        assert!((0.03..1.0).contains(&after), "retired {after}");
        // This thread is not in the group.
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        assert_eq!(group.seconds(), after);
    }
}
