//! Monitor: turns two consecutive collector snapshots into one feature
//! vector of per-second rates and ratios. A feature whose signal is missing
//! (not attached on this kernel) is left out, never faked as zero.

use std::{collections::BTreeMap, net::IpAddr};

use agent_common::net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

use crate::{
    collectors::Snapshot,
    signals::{
        drops::Drops, packets::Packets, process::Processes, runqueue::RunQueue, syscalls::Syscalls,
        tcp::Tcp,
    },
};

/// Feature name → value for one cycle.
pub type Features = BTreeMap<&'static str, f64>;

/// What kind of thing a culprit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CulpritKind {
    Peer,
    Process,
    Cgroup,
}

impl CulpritKind {
    pub fn label(self) -> &'static str {
        match self {
            CulpritKind::Peer => "peer",
            CulpritKind::Process => "process",
            CulpritKind::Cgroup => "cgroup",
        }
    }
}

/// A subject that moved a feature, with its share of what moved it.
///
/// Named for reading, not for acting: `proven` is false unless the
/// kernel showed the subject is who it claims to be (a peer that
/// completed a handshake, a local process). Enforcement never blocks on
/// a culprit; it has its own proof (guard.rs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Culprit {
    pub kind: CulpritKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<IpAddr>,
    /// IP protocol of a peer's traffic ("tcp", "udp", "icmp", …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// What `amount` measures, per second over the cycle
    /// ("inbound_packets_per_second", "child_execs_and_exits_per_second", …).
    pub measure: &'static str,
    pub amount: f64,
    /// Bytes per second, for a peer's traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<f64>,
    /// Its share of the cycle's total of `measure` (0..1).
    pub share: f64,
    /// Whether the subject is proven to be who it appears to be: a local
    /// process or cgroup is; a remote address is not (sources can be
    /// forged).
    pub proven: bool,
    /// A process's or cgroup's pod, namespace and container, where the
    /// container runtime names them (`crate::pods`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Identity>,
}

impl Culprit {
    /// The stable name of the culprit (an address, "PID (COMM)", a
    /// cgroup path): the alert label.
    pub fn name(&self) -> String {
        match self.kind {
            CulpritKind::Peer => self.peer.map(|p| p.to_string()).unwrap_or_default(),
            CulpritKind::Process => format!(
                "{} ({})",
                self.pid.unwrap_or(0),
                self.comm.as_deref().unwrap_or("?")
            ),
            CulpritKind::Cgroup => self.cgroup.clone().unwrap_or_default(),
        }
    }

    /// One line an operator reads: what it is, how much, what share, and
    /// its pod where there is one.
    pub fn describe(&self) -> String {
        let line = self.describe_subject();
        match &self.pod {
            Some(p) if p.pod.is_empty() => match &p.container {
                Some(c) => format!("{line}, container {c}"),
                None => line,
            },
            Some(p) => format!(
                "{line}, pod {}/{}{}",
                p.namespace,
                p.pod,
                p.container
                    .as_deref()
                    .map(|c| format!(" container {c}"))
                    .unwrap_or_default()
            ),
            None => line,
        }
    }

    fn describe_subject(&self) -> String {
        let share = self.share * 100.0;
        match self.kind {
            CulpritKind::Peer if self.measure == "inbound_packets_per_second" => format!(
                "peer {} sent {:.0}% of inbound {} packets ({:.0}/s, {:.0} B/s; source address unproven)",
                self.name(),
                share,
                self.protocol.unwrap_or("IP"),
                self.amount,
                self.bytes_per_second.unwrap_or(0.0)
            ),
            CulpritKind::Peer if self.measure == "tcp_rtt_mean_seconds" => format!(
                "peer {}: {:.0}% of the TCP round-trip time measured, mean {:.1} ms",
                self.name(),
                share,
                self.amount * 1e3
            ),
            CulpritKind::Peer => format!(
                "peer {}: {:.0}% of {} ({:.1}/s)",
                self.name(),
                share,
                self.measure.replace('_', " "),
                self.amount
            ),
            CulpritKind::Process => format!(
                "process {}: {:.0}% of {} ({:.0}/s){}",
                self.name(),
                share,
                self.measure.replace('_', " "),
                self.amount,
                self.cgroup
                    .as_deref()
                    .map(|c| format!(", cgroup {c}"))
                    .unwrap_or_default()
            ),
            CulpritKind::Cgroup => format!(
                "cgroup {}: {:.0}% of {} ({:.3}/s)",
                self.name(),
                share,
                self.measure.replace('_', " "),
                self.amount
            ),
        }
    }
}

/// A TCP peer's counters between two cycles.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TcpPeerDelta {
    pub retransmits: u64,
    pub connect_failures: u64,
    pub rtt_samples: u64,
    pub rtt_sum_us: u64,
}

/// What the cycle's evidence names, when it names something.
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    /// The peer that opened flows to the most distinct local ports.
    pub widest_peer: Option<IpAddr>,
    /// The parent whose children exec'd and exited the most this cycle,
    /// with the count and its latest child's cgroup.
    pub busiest_parent: Option<(u32, crate::events::Churn)>,
    /// Every parent whose children exec'd or exited this cycle, busiest
    /// first.
    pub parents: Vec<(u32, crate::events::Churn)>,
    /// Inbound traffic per (peer, protocol) this cycle, heaviest first.
    pub inbound: Vec<crate::signals::packets::InboundPeer>,
    /// Inbound packets and bytes per protocol this cycle.
    pub inbound_totals: BTreeMap<u8, (u64, u64)>,
    /// TCP peers' retransmits and RTT samples this cycle.
    pub tcp_peers: Vec<(IpAddr, TcpPeerDelta)>,
    /// Every cgroup that waited for a CPU this cycle: (id, seconds waited
    /// per second, waits per second), longest first.
    pub waiting_cgroups: Vec<(u64, f64, f64)>,
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
        // SYNs answered with a RST (a closed port, a REJECT rule): refused,
        // not half-open. A flood leaves SYN_RECV entries (SYN-ACKs
        // answered by nobody); a refusal burst leaves none.
        let rst_out = |s: &Snapshot| s.reading::<Packets>().map_or(0, Packets::resets_sent);
        let refused = rate(rst_out(prev), rst_out(now)).min(syns);
        f.insert("refused_syn_per_second", refused);
        f.insert(
            "half_open_syn_per_second",
            (syns - accepts - refused).max(0.0),
        );
    }
    if signals.network {
        let received =
            |s: &Snapshot, p: Option<u8>| s.reading::<Packets>().map_or(0, |r| r.received(p));
        let inbound = |p: Option<u8>| rate(received(prev, p), received(now, p));
        f.insert("inbound_packets_per_second", inbound(None));
        f.insert("udp_in_packets_per_second", inbound(Some(IPPROTO_UDP)));
        f.insert(
            "icmp_in_packets_per_second",
            inbound(Some(IPPROTO_ICMP)) + inbound(Some(IPPROTO_ICMPV6)),
        );
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
    let waiting_cgroups = waiting_cgroups(prev, now, dt);
    let flows = now.reading::<Packets>().map(|p| &p.flows);
    let subjects = Subjects {
        widest_peer: widest_peer.map(|(peer, _)| peer),
        busiest_parent: None,
        parents: Vec::new(),
        inbound: flows.map(|f| f.inbound.clone()).unwrap_or_default(),
        inbound_totals: flows.map(|f| f.inbound_totals.clone()).unwrap_or_default(),
        tcp_peers: tcp_peer_deltas(prev, now),
        syscall_processes: now
            .reading::<Syscalls>()
            .map(|s| s.processes.clone())
            .unwrap_or_default(),
        most_waiting_cgroup: waiting_cgroups.first().copied(),
        waiting_cgroups,
        seconds: dt,
    };
    Some((f, subjects))
}

/// The TCP peers' counters that moved between the two snapshots (a peer
/// new in `now` counts from zero).
fn tcp_peer_deltas(prev: &Snapshot, now: &Snapshot) -> Vec<(IpAddr, TcpPeerDelta)> {
    let peers = |s: &Snapshot| {
        s.reading::<Tcp>()
            .map(|t| t.peers.clone())
            .unwrap_or_default()
    };
    let before: std::collections::HashMap<IpAddr, agent_common::tcp::TcpPeerStats> =
        peers(prev).into_iter().collect();
    peers(now)
        .into_iter()
        .filter_map(|(peer, n)| {
            let p = before.get(&peer).copied().unwrap_or_default();
            // A dual-stack socket's IPv4 peer is named as IPv4.
            let peer = peer.to_canonical();
            let d = TcpPeerDelta {
                retransmits: n.retransmits.saturating_sub(p.retransmits),
                connect_failures: n.connect_failures.saturating_sub(p.connect_failures),
                rtt_samples: n.rtt_samples.saturating_sub(p.rtt_samples),
                rtt_sum_us: n.rtt_sum_us.saturating_sub(p.rtt_sum_us),
            };
            (d != TcpPeerDelta::default()).then_some((peer, d))
        })
        .collect()
}

/// The cgroup whose summed run-queue wait grew most between the two
/// snapshots (a cgroup new in `now` counts from zero).
#[cfg(test)]
fn most_waiting_cgroup(prev: &Snapshot, now: &Snapshot, dt: f64) -> Option<(u64, f64, f64)> {
    waiting_cgroups(prev, now, dt).first().copied()
}

/// Every cgroup whose summed run-queue wait grew between the two
/// snapshots, longest wait first (a cgroup new in `now` counts from zero).
fn waiting_cgroups(prev: &Snapshot, now: &Snapshot, dt: f64) -> Vec<(u64, f64, f64)> {
    fn totals(s: &Snapshot) -> &[(u64, u64, u64)] {
        s.reading::<RunQueue>()
            .map_or(&[], |r| r.cgroup_totals.as_slice())
    }
    let before: std::collections::HashMap<u64, (u64, u64)> = totals(prev)
        .iter()
        .map(|&(id, sum, n)| (id, (sum, n)))
        .collect();
    let mut grown: Vec<(u64, u64, u64)> = totals(now)
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
        .collect();
    grown.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    grown
        .into_iter()
        .map(|(id, d_sum, d_n)| (id, d_sum as f64 / 1e9 / dt, d_n as f64 / dt))
        .collect()
}

/// Culprits kept per anomaly.
pub const CULPRITS_KEPT: usize = 3;

/// The subjects behind anomaly `kind`, heaviest first, each with its share
/// of the cycle's total of what it is measured by: the source peers of a
/// traffic feature (of the kind's protocol), the parents of an exec or fork
/// storm, the processes of a syscall storm, the cgroups of CPU saturation.
pub fn culprits(kind: &str, s: &Subjects) -> Vec<Culprit> {
    let mut out = match kind {
        "syn_flood" | "port_scan" | "connection_storm" | "connection_refusals" => {
            peers_of(s, &[IPPROTO_TCP])
        }
        "udp_flood" => peers_of(s, &[IPPROTO_UDP]),
        "icmp_flood" => peers_of(s, &[IPPROTO_ICMP, IPPROTO_ICMPV6]),
        "traffic_surge" => peers_of(s, &[]),
        "packet_loss" => {
            let lossy = tcp_peers_by(
                s,
                "tcp_retransmits_per_second",
                |d| d.retransmits as f64,
                |d, dt| d.retransmits as f64 / dt,
            );
            if lossy.is_empty() {
                peers_of(s, &[])
            } else {
                lossy
            }
        }
        // Weighted by RTT summed: a peer with many slow samples moved the
        // mean most. Its amount is its own mean RTT.
        "latency_regression" => tcp_peers_by(
            s,
            "tcp_rtt_mean_seconds",
            |d| d.rtt_sum_us as f64,
            |d, _| d.rtt_sum_us as f64 / d.rtt_samples.max(1) as f64 / 1e6,
        ),
        "fork_storm" | "exec_storm" => parents(s),
        "syscall_storm" => syscall_processes(s, false),
        "syscall_error_spike" => syscall_processes(s, true),
        "cpu_saturation" => waiting_cgroups_of(s),
        _ => Vec::new(),
    };
    out.truncate(CULPRITS_KEPT);
    let pods = crate::pods::cache();
    for c in &mut out {
        c.pod = match c.kind {
            CulpritKind::Process => c.pid.and_then(|pid| pods.resolve_pid(pid)),
            CulpritKind::Cgroup => c.cgroup.as_deref().and_then(|path| pods.resolve(path)),
            CulpritKind::Peer => None,
        };
    }
    out
}

fn protocol_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        47 => "gre",
        50 => "esp",
        132 => "sctp",
        _ => "other",
    }
}

/// Inbound peers of `protocols` (empty: every protocol, rows summed per
/// peer) by packets.
fn peers_of(s: &Subjects, protocols: &[u8]) -> Vec<Culprit> {
    let dt = s.seconds.max(1e-9);
    let wanted = |p: u8| protocols.is_empty() || protocols.contains(&p);
    let total: u64 = s
        .inbound_totals
        .iter()
        .filter(|(p, _)| wanted(**p))
        .map(|(_, t)| t.0)
        .sum();
    let mut per_peer: Vec<(IpAddr, Option<u8>, u64, u64)> = Vec::new();
    for row in s.inbound.iter().filter(|r| wanted(r.protocol)) {
        match per_peer.iter_mut().find(|e| e.0 == row.peer) {
            Some(e) => {
                e.1 = None;
                e.2 += row.packets;
                e.3 += row.bytes;
            }
            None => per_peer.push((row.peer, Some(row.protocol), row.packets, row.bytes)),
        }
    }
    per_peer.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    per_peer
        .into_iter()
        .filter(|e| e.2 > 0)
        .map(|(peer, protocol, packets, bytes)| Culprit {
            kind: CulpritKind::Peer,
            peer: Some(peer),
            protocol: Some(protocol.map_or("ip", protocol_name)),
            pid: None,
            comm: None,
            cgroup: None,
            measure: "inbound_packets_per_second",
            amount: packets as f64 / dt,
            bytes_per_second: Some(bytes as f64 / dt),
            share: share(packets as f64, total as f64),
            proven: false,
            pod: None,
        })
        .collect()
}

fn share(part: f64, total: f64) -> f64 {
    if total > 0.0 {
        (part / total).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// TCP peers ranked by `weight` (their share is of its total), each
/// measured by `amount` (given the cycle's seconds).
fn tcp_peers_by(
    s: &Subjects,
    measure: &'static str,
    weight: impl Fn(&TcpPeerDelta) -> f64,
    amount: impl Fn(&TcpPeerDelta, f64) -> f64,
) -> Vec<Culprit> {
    let dt = s.seconds.max(1e-9);
    let total: f64 = s.tcp_peers.iter().map(|(_, d)| weight(d)).sum();
    let mut rows: Vec<(IpAddr, f64, &TcpPeerDelta)> = s
        .tcp_peers
        .iter()
        .map(|(p, d)| (*p, weight(d), d))
        .filter(|(_, v, _)| *v > 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .map(|(peer, v, d)| Culprit {
            kind: CulpritKind::Peer,
            peer: Some(peer),
            protocol: Some("tcp"),
            pid: None,
            comm: None,
            cgroup: None,
            measure,
            amount: amount(d, dt),
            bytes_per_second: None,
            share: share(v, total),
            // Retransmits count SYNs too: a handshake is not implied.
            proven: false,
            pod: None,
        })
        .collect()
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "exited".into())
}

fn parents(s: &Subjects) -> Vec<Culprit> {
    let dt = s.seconds.max(1e-9);
    let total: u64 = s.parents.iter().map(|(_, c)| c.events).sum();
    s.parents
        .iter()
        .take(CULPRITS_KEPT)
        .map(|(pid, churn)| Culprit {
            kind: CulpritKind::Process,
            peer: None,
            protocol: None,
            pid: Some(*pid),
            comm: Some(comm_of(*pid)),
            cgroup: Some(crate::cgroup::name(churn.cgroup_id)),
            measure: "child_execs_and_exits_per_second",
            amount: churn.events as f64 / dt,
            bytes_per_second: None,
            share: share(churn.events as f64, total as f64),
            proven: true,
            pod: None,
        })
        .collect()
}

fn syscall_processes(s: &Subjects, by_errors: bool) -> Vec<Culprit> {
    let dt = s.seconds.max(1e-9);
    let value = |c: &agent_common::syscalls::ProcessSyscalls| {
        if by_errors { c.errors } else { c.calls }
    };
    let total: u64 = s.syscall_processes.iter().map(|(_, c)| value(c)).sum();
    let mut rows: Vec<&(u32, agent_common::syscalls::ProcessSyscalls)> = s
        .syscall_processes
        .iter()
        .filter(|(_, c)| value(c) > 0)
        .collect();
    rows.sort_by(|a, b| value(&b.1).cmp(&value(&a.1)).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .take(CULPRITS_KEPT)
        .map(|(pid, c)| Culprit {
            kind: CulpritKind::Process,
            peer: None,
            protocol: None,
            pid: Some(*pid),
            comm: Some(comm_of(*pid)),
            cgroup: std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|t| proc_cgroup_v2(&t)),
            measure: if by_errors {
                "failed_syscalls_per_second"
            } else {
                "syscalls_per_second"
            },
            amount: value(c) as f64 / dt,
            bytes_per_second: None,
            share: share(value(c) as f64, total as f64),
            proven: true,
            pod: None,
        })
        .collect()
}

fn waiting_cgroups_of(s: &Subjects) -> Vec<Culprit> {
    let total: f64 = s.waiting_cgroups.iter().map(|c| c.1).sum();
    s.waiting_cgroups
        .iter()
        .take(CULPRITS_KEPT)
        .map(|&(id, waited, _)| Culprit {
            kind: CulpritKind::Cgroup,
            peer: None,
            protocol: None,
            pid: None,
            comm: None,
            cgroup: Some(crate::cgroup::name(id)),
            measure: "cpu_wait_seconds_per_second",
            amount: waited,
            bytes_per_second: None,
            share: share(waited, total),
            proven: true,
            pod: None,
        })
        .collect()
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
