//! Monitor: turns two consecutive collector snapshots into one feature
//! vector of per-second rates and ratios. A feature whose signal is missing
//! (not attached on this kernel) is left out, never faked as zero.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    collectors::Snapshot,
    signals::{
        drops::Drops, packets::Packets, process::Processes, runqueue::RunQueue, syscalls::Syscalls,
        tcp::Tcp,
    },
};

/// Feature name → value for one cycle.
pub type Features = BTreeMap<&'static str, f64>;

/// What the cycle's evidence names, when it names something.
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    /// The peer that opened flows to the most distinct local ports.
    pub widest_peer: Option<IpAddr>,
    /// The parent whose children exec'd and exited the most this cycle,
    /// with the count and its latest child's cgroup.
    pub busiest_parent: Option<(u32, crate::events::Churn)>,
    /// While syscalls are counted per process: the busiest processes
    /// (pid, calls, failed) and the seconds they were counted over.
    pub syscall_processes: Vec<(u32, agent_common::syscalls::ProcessSyscalls)>,
    /// The cgroup whose tasks waited longest for a CPU this cycle: (id,
    /// seconds waited per second, waits per second).
    pub most_waiting_cgroup: Option<(u64, f64, f64)>,
    pub seconds: f64,
}

impl Subjects {
    /// "process PID (COMM), N children this cycle, cgroup PATH" for the
    /// busiest parent, read from /proc and /sys/fs/cgroup now (only when
    /// an anomaly names it).
    pub fn describe_parent(&self) -> Option<String> {
        let (pid, churn) = self.busiest_parent?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_else(|_| "exited".into());
        let cgroup = crate::cgroup::name(churn.cgroup_id);
        Some(format!(
            "process {pid} ({comm}), {} child execs and exits in the cycle, cgroup {cgroup}",
            churn.events
        ))
    }

    /// "cgroup PATH: its tasks waited W s per second for a CPU (N waits/s,
    /// mean M ms)" for the cgroup that waited longest this cycle.
    pub fn describe_waiting_cgroup(&self) -> Option<String> {
        let (id, waited, waits) = self.most_waiting_cgroup?;
        let path = crate::cgroup::name(id);
        Some(format!(
            "cgroup {path}: its tasks waited {waited:.2} s per second for a CPU \
             ({waits:.0} waits/s, mean {:.2} ms)",
            if waits > 0.0 {
                waited / waits * 1e3
            } else {
                0.0
            }
        ))
    }
}

/// The pod, namespace and container of what an anomaly of `kind` names
/// (its process or cgroup), when the container runtime knows it.
pub fn subject_pod(kind: &str, subjects: &Subjects) -> Option<crate::pods::Identity> {
    let pods = crate::pods::cache();
    match kind {
        "syscall_storm" => pods.resolve_pid(syscall_pid(subjects, false)?),
        "syscall_error_spike" => pods.resolve_pid(syscall_pid(subjects, true)?),
        "fork_storm" => {
            let (pid, churn) = subjects.busiest_parent?;
            pods.resolve_pid(pid)
                .or_else(|| pods.resolve(&crate::cgroup::name(churn.cgroup_id)))
        }
        "cpu_saturation" => {
            let (id, _, _) = subjects.most_waiting_cgroup?;
            pods.resolve(&crate::cgroup::name(id))
        }
        _ => None,
    }
}

/// The process that made the most syscalls (`by_errors`: failed ones).
fn syscall_pid(subjects: &Subjects, by_errors: bool) -> Option<u32> {
    let (pid, counts) = subjects
        .syscall_processes
        .iter()
        .max_by_key(|(_, c)| if by_errors { c.errors } else { c.calls })?;
    (!by_errors || counts.errors > 0).then_some(*pid)
}

/// "process PID (COMM): N syscalls/s, F failed/s, cgroup PATH" for the
/// process that made the most syscalls (`by_errors`: failed ones) while
/// they were counted per process; None when they were not.
pub fn describe_syscall_process(subjects: &Subjects, by_errors: bool) -> Option<String> {
    let (pid, counts) = subjects
        .syscall_processes
        .iter()
        .max_by_key(|(_, c)| if by_errors { c.errors } else { c.calls })?;
    if subjects.seconds <= 0.0 || (by_errors && counts.errors == 0) {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "exited".into());
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| proc_cgroup_v2(&t))
        .unwrap_or_else(|| "unknown".into());
    Some(format!(
        "process {pid} ({comm}): {:.0} syscalls/s, {:.0} failed/s, cgroup {cgroup}",
        counts.calls as f64 / subjects.seconds,
        counts.errors as f64 / subjects.seconds
    ))
}

/// The cgroup v2 path in a /proc/PID/cgroup text: its one "0::PATH" line.
pub fn proc_cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

/// Rates between `prev` and `now`; None until two snapshots exist.
pub fn features(
    prev: &Snapshot,
    now: &Snapshot,
    signals: &Signals,
) -> Option<(Features, Subjects)> {
    let dt = now.seconds_since(prev)?;
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
    let mut f = Features::new();
    // TCP totals, from the signal's reading (zero without one).
    let tcp = |s: &Snapshot| s.reading::<Tcp>().map(|t| t.stats).unwrap_or_default();
    let (tcp_prev, tcp_now) = (tcp(prev), tcp(now));

    if signals.syscalls {
        let total = |s: &Snapshot| s.reading::<Syscalls>().map_or(0, Syscalls::calls);
        let errors = |s: &Snapshot| s.reading::<Syscalls>().map_or(0, Syscalls::errors);
        let calls = rate(total(prev), total(now));
        let failed = rate(errors(prev), errors(now));
        f.insert("syscalls_per_second", calls);
        // The share, not the rate: a storm of mostly successful calls is
        // not an error spike; a loop of failing ones is.
        if calls > 0.0 {
            f.insert("syscall_error_share", failed / calls);
        }
    }
    let widest_peer = now.reading::<Packets>().and_then(|p| p.flows.widest_peer);
    if signals.network {
        let fan_out = widest_peer.map_or(0, |(_, n)| n);
        f.insert("peer_ports_per_cycle", fan_out as f64);
    }
    if signals.network && signals.tcp {
        // SYNs that did not become a connection: a flood's signature. A
        // burst of real connections raises SYNs and accepts together.
        let syn_in = |s: &Snapshot| s.reading::<Packets>().map_or(0, Packets::syns_received);
        let syns = rate(syn_in(prev), syn_in(now));
        let accepts = rate(tcp_prev.accepts, tcp_now.accepts);
        f.insert("half_open_syn_per_second", (syns - accepts).max(0.0));
    }
    if signals.tcp {
        f.insert(
            "tcp_handshakes_per_second",
            rate(
                tcp_prev.accepts + tcp_prev.connects,
                tcp_now.accepts + tcp_now.connects,
            ),
        );
        f.insert(
            "tcp_retransmits_per_second",
            rate(tcp_prev.retransmits, tcp_now.retransmits),
        );
        f.insert(
            "tcp_resets_sent_per_second",
            rate(tcp_prev.resets_sent, tcp_now.resets_sent),
        );
        // Means over the cycle's samples; no samples, no feature.
        let connects = tcp_now.connects.saturating_sub(tcp_prev.connects);
        if connects > 0 {
            let sum = tcp_now
                .connect_latency_sum_ns
                .saturating_sub(tcp_prev.connect_latency_sum_ns);
            f.insert(
                "tcp_connect_mean_seconds",
                sum as f64 / connects as f64 / 1e9,
            );
        }
        let rtts = tcp_now.rtt_samples.saturating_sub(tcp_prev.rtt_samples);
        if rtts > 0 {
            let sum = tcp_now.rtt_sum_us.saturating_sub(tcp_prev.rtt_sum_us);
            f.insert("tcp_rtt_mean_seconds", sum as f64 / rtts as f64 / 1e6);
        }
    }
    if signals.drops {
        let drops = |s: &Snapshot| s.reading::<Drops>().map_or(0, Drops::total);
        f.insert("packet_drops_per_second", rate(drops(prev), drops(now)));
    }
    if signals.runqueue {
        let total = |s: &Snapshot| s.reading::<RunQueue>().map(|r| r.total).unwrap_or_default();
        let (now_rq, prev_rq) = (total(now), total(prev));
        let samples = now_rq.samples.saturating_sub(prev_rq.samples);
        if samples > 0 {
            let sum = now_rq.sum_ns.saturating_sub(prev_rq.sum_ns);
            f.insert(
                "runqueue_mean_wait_seconds",
                sum as f64 / samples as f64 / 1e9,
            );
        }
    }
    if signals.processes {
        let processes = |s: &Snapshot| s.reading::<Processes>().cloned().unwrap_or_default();
        let (prev_p, now_p) = (processes(prev), processes(now));
        f.insert("process_exits_per_second", rate(prev_p.exits, now_p.exits));
        f.insert("process_execs_per_second", rate(prev_p.execs, now_p.execs));
    }
    let subjects = Subjects {
        widest_peer: widest_peer.map(|(peer, _)| peer),
        busiest_parent: None,
        syscall_processes: now
            .reading::<Syscalls>()
            .map(|s| s.processes.clone())
            .unwrap_or_default(),
        most_waiting_cgroup: most_waiting_cgroup(prev, now, dt),
        seconds: dt,
    };
    Some((f, subjects))
}

/// The cgroup whose summed run-queue wait grew most between the two
/// snapshots (a cgroup new in `now` counts from zero).
fn most_waiting_cgroup(prev: &Snapshot, now: &Snapshot, dt: f64) -> Option<(u64, f64, f64)> {
    fn totals(s: &Snapshot) -> &[(u64, u64, u64)] {
        s.reading::<RunQueue>()
            .map_or(&[], |r| r.cgroup_totals.as_slice())
    }
    let before: std::collections::HashMap<u64, (u64, u64)> = totals(prev)
        .iter()
        .map(|&(id, sum, n)| (id, (sum, n)))
        .collect();
    totals(now)
        .iter()
        .map(|&(id, sum, n)| {
            let (sum0, n0) = before.get(&id).copied().unwrap_or((0, 0));
            // A cgroup evicted and re-added restarts below its old total.
            let (d_sum, d_n) = if sum >= sum0 {
                (sum - sum0, n.saturating_sub(n0))
            } else {
                (sum, n)
            };
            (id, d_sum, d_n)
        })
        .filter(|&(_, d_sum, _)| d_sum > 0)
        .max_by_key(|&(id, d_sum, _)| (d_sum, std::cmp::Reverse(id)))
        .map(|(id, d_sum, d_n)| (id, d_sum as f64 / 1e9 / dt, d_n as f64 / dt))
}

/// Which signals are attached (so missing ones are skipped).
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    pub syscalls: bool,
    pub network: bool,
    pub tcp: bool,
    pub drops: bool,
    pub runqueue: bool,
    pub processes: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_totals(totals: &[(u64, u64, u64)]) -> Snapshot {
        let reading = RunQueue {
            cgroup_totals: totals.to_vec(),
            ..Default::default()
        };
        Snapshot {
            signals: vec![("runqueue", std::sync::Arc::new(reading))],
            ..Default::default()
        }
    }

    #[test]
    fn the_cgroup_that_waited_most_this_cycle_is_named_not_the_oldest() {
        // Cgroup 1 waited longest in all, cgroup 2 most this cycle; 3 is new.
        let prev = with_totals(&[(1, 50_000_000_000, 900), (2, 1_000_000_000, 100)]);
        let now = with_totals(&[
            (1, 50_100_000_000, 910),
            (2, 4_000_000_000, 400),
            (3, 500_000_000, 10),
        ]);
        let (id, waited, waits) = most_waiting_cgroup(&prev, &now, 2.0).unwrap();
        assert_eq!(id, 2);
        assert!((waited - 1.5).abs() < 1e-9, "{waited}");
        assert!((waits - 150.0).abs() < 1e-9, "{waits}");
    }

    #[test]
    fn a_cgroup_evicted_and_back_counts_from_zero() {
        let prev = with_totals(&[(7, 9_000_000_000, 90)]);
        let now = with_totals(&[(7, 2_000_000_000, 20)]);
        assert_eq!(most_waiting_cgroup(&prev, &now, 1.0), Some((7, 2.0, 20.0)));
        assert_eq!(most_waiting_cgroup(&now, &now, 1.0), None);
    }
}
