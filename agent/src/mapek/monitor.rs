//! Monitor: turns two consecutive collector snapshots into one feature
//! vector of per-second rates and ratios. A feature whose signal is missing
//! (not attached on this kernel) is left out, never faked as zero.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use agent_common::net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

use crate::{
    collectors::Snapshot,
    signals::{
        block::Block,
        drops::{Drops, PeerDrops, is_loss},
        packets::Packets,
        process::Processes,
        runqueue::{CgroupTotals, RunQueue},
        syscalls::Syscalls,
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
    /// A kernel drop reason, on the interface the packets had.
    Drop,
    /// A block device.
    Device,
}

impl CulpritKind {
    pub fn label(self) -> &'static str {
        match self {
            CulpritKind::Peer => "peer",
            CulpritKind::Process => "process",
            CulpritKind::Cgroup => "cgroup",
            CulpritKind::Drop => "drop",
            CulpritKind::Device => "device",
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
    /// A drop's reason (the kernel's name, e.g. NETFILTER_DROP), and the
    /// interface and network namespace ("host": the agent's) the packets
    /// had, if they had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// A block device, as sysfs names it ("vda", "loop3").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Drops on an interface counted one in N this cycle (a flood of
    /// drops, `sonde_interface_drops_sample_period`): `amount` and `share`
    /// are estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_period: Option<u64>,
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
    /// A process's or cgroup's pod, namespace and container, a peer's pod
    /// (a pod of this node with that IP) or a drop interface's (a pod's
    /// veth), where the container runtime names them (`crate::pods`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Identity>,
}

impl Culprit {
    /// Every optional field empty: what a culprit constructor starts from
    /// (`..Culprit::NONE`), setting its kind, measure, amount, share,
    /// proof and the fields its kind has.
    const NONE: Culprit = Culprit {
        kind: CulpritKind::Peer,
        peer: None,
        protocol: None,
        pid: None,
        comm: None,
        cgroup: None,
        reason: None,
        interface: None,
        netns: None,
        device: None,
        sample_period: None,
        measure: "",
        amount: 0.0,
        bytes_per_second: None,
        share: 0.0,
        proven: false,
        pod: None,
    };

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
            CulpritKind::Drop => {
                let reason = self.reason.as_deref().unwrap_or("?");
                match (&self.interface, self.netns.as_deref()) {
                    (Some(i), None | Some("host")) => format!("{reason} on {i}"),
                    (Some(i), Some(ns)) => format!("{reason} on {i} (netns {ns})"),
                    (None, _) => reason.to_owned(),
                }
            }
            CulpritKind::Device => self.device.clone().unwrap_or_default(),
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
            CulpritKind::Peer
                if matches!(
                    self.measure,
                    "inbound_packets_per_second"
                        | "inbound_new_flows_per_second"
                        | "inbound_fragments_per_second"
                ) =>
            {
                let (verb, of, unit) = match self.measure {
                    "inbound_packets_per_second" => ("sent", "inbound", "packets"),
                    "inbound_fragments_per_second" => ("sent", "inbound", "IP fragments"),
                    _ => ("opened", "new inbound", "flows"),
                };
                format!(
                    "peer {} {verb} {share:.0}% of {of} {} {unit} ({:.0}/s, {:.0} B/s; source address unproven)",
                    self.name(),
                    self.protocol.unwrap_or("IP"),
                    self.amount,
                    self.bytes_per_second.unwrap_or(0.0)
                )
            }
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
            CulpritKind::Drop => format!(
                "drop reason {}: {:.0}% of packet drops ({:.0}/s){}{}",
                self.name(),
                share,
                self.amount,
                self.sample_period
                    .map(|n| format!(", estimated from one drop in {n}"))
                    .unwrap_or_default(),
                self.peer
                    .map(|p| format!(", most of them to or from {p}"))
                    .unwrap_or_default()
            ),
            CulpritKind::Cgroup => format!(
                "cgroup {}: {:.0}% of {} ({:.3}/s)",
                self.name(),
                share,
                self.measure.replace('_', " "),
                self.amount
            ),
            CulpritKind::Device if self.measure == "block_io_stalled_seconds" => format!(
                "device {}: requests in flight, none completed for {:.1} s ({:.0}% of the \
                 requests stuck in flight)",
                self.name(),
                self.amount,
                share
            ),
            CulpritKind::Device => format!(
                "device {}: requests took {:.1} ms each on average, {:.0}% of the time \
                 block I/O took",
                self.name(),
                self.amount * 1e3,
                share
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
    /// Inbound packets and bytes per protocol this cycle (ICMPv6 link
    /// control apart, in `inbound_link_control`).
    pub inbound_totals: BTreeMap<u8, (u64, u64)>,
    pub inbound_link_control: (u64, u64),
    /// Inbound IP fragments' packets and bytes this cycle (part of
    /// `inbound_totals`).
    pub inbound_fragments: (u64, u64),
    /// Inbound flows opened per protocol this cycle.
    pub inbound_new_flows: BTreeMap<u8, u64>,
    /// TCP peers' retransmits and RTT samples this cycle.
    pub tcp_peers: Vec<(IpAddr, TcpPeerDelta)>,
    /// Packet drops this cycle by reason and device, most first.
    pub drops: Vec<DropDelta>,
    /// Packet drops this cycle by reason and remote address, most first.
    pub drop_peers: Vec<DropPeerDelta>,
    /// The agent's network namespace's own addresses: a TCP "peer" that is
    /// one of them is this node seen from another namespace on it.
    pub own_addresses: Vec<IpAddr>,
    /// Every cgroup whose tasks waited for a CPU, or ran after a wait,
    /// this cycle, longest wait first.
    pub cgroups: Vec<CgroupCpu>,
    /// Block devices' reads and writes completed this cycle, the most
    /// time taken first.
    pub block_devices: Vec<BlockDelta>,
    /// Every whole disk that has done I/O: its requests in flight now,
    /// and how long they have completed none.
    pub block_stalls: Vec<crate::diskstats::Stall>,
    /// While syscalls are counted per process: the busiest processes
    /// (pid, calls, failed) and the seconds they were counted over.
    pub syscall_processes: Vec<(u32, agent_common::syscalls::ProcessSyscalls)>,
    pub seconds: f64,
}

/// One cgroup's share of CPU contention in a cycle, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupCpu {
    pub id: u64,
    /// Seconds its tasks waited for a CPU, and their waits.
    pub waited: f64,
    pub waits: f64,
    /// CPU seconds its tasks ran after those waits.
    pub ran: f64,
    /// How much of `ran` is above its usual ([`CpuUsual`]; 0 until then).
    pub added: f64,
}

/// CPU seconds per second a cgroup must add to its usual to be named as
/// taking the CPUs (a twentieth of a core: less is scheduling noise).
const CPU_ADDED_MIN: f64 = 0.05;

/// Each cgroup's usual CPU: a moving mean of what its tasks ran per
/// second (weight 1/20 per cycle). CPU contention is named by who took
/// more CPU than usual, not by who waited most: the waiters are often its
/// victims (the node's steady load), the taker a newcomer.
#[derive(Debug, Default)]
pub struct CpuUsual {
    usual: HashMap<u64, f64>,
}

impl CpuUsual {
    const WEIGHT: f64 = 0.05;

    /// Fills each cgroup's `added` from its usual, then learns this cycle
    /// unless `hold` (CPU contention is open: its taker is not usual).
    pub fn observe(&mut self, cgroups: &mut [CgroupCpu], hold: bool) {
        for c in cgroups.iter_mut() {
            let usual = self.usual.get(&c.id).copied().unwrap_or(0.0);
            c.added = (c.ran - usual).max(0.0);
        }
        if hold {
            return;
        }
        let ran: HashMap<u64, f64> = cgroups.iter().map(|c| (c.id, c.ran)).collect();
        for c in cgroups.iter() {
            self.usual.entry(c.id).or_insert(0.0);
        }
        // A cgroup that did not run is learned at 0, and forgotten once its
        // usual is nothing (ids are never reused).
        self.usual.retain(|id, usual| {
            *usual += Self::WEIGHT * (ran.get(id).copied().unwrap_or(0.0) - *usual);
            *usual > 1e-6 || ran.contains_key(id)
        });
    }
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

    /// CPU contention's cgroups this cycle, heaviest first, with the
    /// measure that ranks them: those that took more CPU than usual, by
    /// the CPU they added; else (nobody did: the contention is the node's
    /// usual load at a busier moment) those that waited longest.
    fn cpu_ranked(&self) -> (&'static str, fn(&CgroupCpu) -> f64, Vec<&CgroupCpu>) {
        let mut ranked: Vec<&CgroupCpu> = self.cpu_added().collect();
        let (measure, amount): (&'static str, fn(&CgroupCpu) -> f64) = if ranked.is_empty() {
            ranked = self.cgroups.iter().collect();
            ("cpu_wait_seconds_per_second", |c| c.waited)
        } else {
            ("cpu_seconds_added_per_second", |c| c.added)
        };
        ranked.sort_by(|a, b| amount(b).total_cmp(&amount(a)).then(a.id.cmp(&b.id)));
        (measure, amount, ranked)
    }

    /// The cgroups that took more CPU than usual this cycle (those CPU
    /// contention is named by, when there are any).
    pub fn cpu_added(&self) -> impl Iterator<Item = &CgroupCpu> {
        self.cgroups.iter().filter(|c| c.added >= CPU_ADDED_MIN)
    }

    /// The cgroup behind CPU contention this cycle: the first of
    /// [`Self::cpu_ranked`].
    pub fn cpu_taker(&self) -> Option<&CgroupCpu> {
        self.cpu_ranked().2.first().copied()
    }

    /// "cgroup PATH: ran R CPU s/s, A above its usual; its tasks waited W s
    /// per second for a CPU (N waits/s, mean M ms)" for [`Self::cpu_taker`].
    pub fn describe_cpu_taker(&self) -> Option<String> {
        let c = self.cpu_taker()?;
        let path = crate::cgroup::name(c.id);
        let took = if c.added >= CPU_ADDED_MIN {
            format!(
                "ran {:.2} CPU s per second, {:.2} above its usual; ",
                c.ran, c.added
            )
        } else {
            String::new()
        };
        Some(format!(
            "cgroup {path}: {took}its tasks waited {:.2} s per second for a CPU \
             ({:.0} waits/s, mean {:.2} ms)",
            c.waited,
            c.waits,
            if c.waits > 0.0 {
                c.waited / c.waits * 1e3
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
        "cpu_saturation" => pods.resolve(&crate::cgroup::name(subjects.cpu_taker()?.id)),
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
        // ICMPv6 link control (neighbour discovery, listener reports) is
        // what every interface coming up sends: 300 pods' veths starting
        // together made 330/s of it. Not a flood of ICMP.
        let link_control = |s: &Snapshot| {
            s.reading::<Packets>()
                .map_or(0, Packets::link_control_received)
        };
        f.insert(
            "icmp_in_packets_per_second",
            (inbound(Some(IPPROTO_ICMP)) + inbound(Some(IPPROTO_ICMPV6))
                - rate(link_control(prev), link_control(now)))
            .max(0.0),
        );
        let fragments = |s: &Snapshot| {
            s.reading::<Packets>()
                .map_or(0, Packets::fragments_received)
        };
        f.insert(
            "ip_fragments_in_per_second",
            rate(fragments(prev), fragments(now)),
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
        // Teardown (a veth deleted, a socket closed) is not loss.
        let drops = |s: &Snapshot| s.reading::<Drops>().map_or(0, Drops::loss);
        f.insert("packet_drops_per_second", rate(drops(prev), drops(now)));
    }
    if signals.runqueue {
        let total = |s: &Snapshot| s.reading::<RunQueue>().map(|r| r.total).unwrap_or_default();
        let (now_rq, prev_rq) = (total(now), total(prev));
        let samples = now_rq.samples.saturating_sub(prev_rq.samples);
        let sum = now_rq.sum_ns.saturating_sub(prev_rq.sum_ns);
        if samples > 0 {
            f.insert(
                "runqueue_mean_wait_seconds",
                sum as f64 / samples as f64 / 1e9,
            );
        }
        // Wait seconds per second is the mean number of tasks kept
        // waiting: moderate contention shows here while the normal
        // load's many short wakeups dilute the mean wait per wait. Only
        // waits behind another task count: tasks waiting for idle CPUs to
        // wake (in a VM, for a busy host to run its halted vCPUs) are not
        // contending for a CPU. In the hour-long soak, all waits reached
        // 0.45-0.61 per CPU in bursts of a second or two while the tasks
        // ran 0.7 of 2 CPUs.
        let behind = now_rq.behind_ns.saturating_sub(prev_rq.behind_ns);
        let cpus = now.reading::<RunQueue>().map_or(1, |r| r.cpus.max(1));
        f.insert(
            "runqueue_waiting_per_cpu",
            behind as f64 / 1e9 / dt / cpus as f64,
        );
    }
    let block_devices = block_deltas(prev, now);
    if signals.block {
        // The slowest device's mean, over devices that did enough I/O for
        // a mean to say something; no such device, no feature.
        let slowest = block_devices
            .iter()
            .filter(|d| d.requests >= BLOCK_MIN_REQUESTS)
            .map(BlockDelta::mean_seconds)
            .reduce(f64::max);
        if let Some(mean) = slowest {
            f.insert("block_io_mean_latency_seconds", mean);
        }
        // A hung disk completes nothing, so no mean shows it; how long
        // its requests have gone without one does.
        f.insert(
            "block_io_stalled_seconds",
            now.reading::<Block>().map_or(0.0, Block::longest_stall),
        );
    }
    if signals.processes {
        let processes = |s: &Snapshot| s.reading::<Processes>().cloned().unwrap_or_default();
        let (prev_p, now_p) = (processes(prev), processes(now));
        f.insert("process_exits_per_second", rate(prev_p.exits, now_p.exits));
        f.insert("process_execs_per_second", rate(prev_p.execs, now_p.execs));
    }
    let cgroups = cgroup_cpu(prev, now, dt);
    let flows = now.reading::<Packets>().map(|p| &p.flows);
    let tcp_peers = tcp_peer_deltas(prev, now);
    let dropped_between = drop_peer_deltas(prev, now);
    // Read only when a TCP peer moved or packets were dropped: that is all
    // they sort out.
    let own_addresses = if tcp_peers.is_empty() && dropped_between.is_empty() {
        Vec::new()
    } else {
        crate::netif::own_addresses().unwrap_or_default()
    };
    let subjects = Subjects {
        widest_peer: widest_peer.map(|(peer, _)| peer),
        busiest_parent: None,
        parents: Vec::new(),
        inbound: flows.map(|f| f.inbound.clone()).unwrap_or_default(),
        inbound_totals: flows.map(|f| f.inbound_totals.clone()).unwrap_or_default(),
        inbound_link_control: flows.map(|f| f.inbound_link_control).unwrap_or_default(),
        inbound_fragments: flows.map(|f| f.inbound_fragments).unwrap_or_default(),
        inbound_new_flows: flows
            .map(|f| f.inbound_new_flows.clone())
            .unwrap_or_default(),
        tcp_peers,
        drops: drop_deltas(prev, now),
        drop_peers: drop_peers(dropped_between, &own_addresses),
        own_addresses,
        syscall_processes: now
            .reading::<Syscalls>()
            .map(|s| s.processes.clone())
            .unwrap_or_default(),
        cgroups,
        block_devices,
        block_stalls: now
            .reading::<Block>()
            .map(|b| b.stalls.clone())
            .unwrap_or_default(),
        seconds: dt,
    };
    Some((f, subjects))
}

/// Reads and writes a device must complete in a cycle for its mean
/// latency to count: one slow request among two is not a slow device.
pub const BLOCK_MIN_REQUESTS: u64 = 3;

/// One block device's reads and writes completed in a cycle. Flushes and
/// discards are left out: their time is the device's cache or its
/// housekeeping, slow by nature, not a request's wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDelta {
    pub device: String,
    pub requests: u64,
    pub sum_ns: u64,
}

impl BlockDelta {
    pub fn mean_seconds(&self) -> f64 {
        self.sum_ns as f64 / self.requests.max(1) as f64 / 1e9
    }
}

/// What each device's reads and writes took between the two snapshots,
/// the most time first (a device new in `now` counts from zero).
fn block_deltas(prev: &Snapshot, now: &Snapshot) -> Vec<BlockDelta> {
    let Some(n) = now.reading::<Block>() else {
        return Vec::new();
    };
    let totals = |b: &Block| {
        let mut by_device: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (device, op, stats) in &b.rows {
            if matches!(*op, "read" | "write") {
                let t = by_device.entry(device.clone()).or_default();
                t.0 += stats.requests;
                t.1 += stats.sum_ns;
            }
        }
        by_device
    };
    let before = prev.reading::<Block>().map(totals).unwrap_or_default();
    let mut rows: Vec<BlockDelta> = totals(n)
        .into_iter()
        .filter_map(|(device, (requests, sum_ns))| {
            let (r0, s0) = before.get(&device).copied().unwrap_or_default();
            // A device gone and back (its key evicted) restarts below.
            let (requests, sum_ns) = if requests >= r0 && sum_ns >= s0 {
                (requests - r0, sum_ns - s0)
            } else {
                (requests, sum_ns)
            };
            (requests > 0).then_some(BlockDelta {
                device,
                requests,
                sum_ns,
            })
        })
        .collect();
    rows.sort_by(|a, b| b.sum_ns.cmp(&a.sum_ns).then(a.device.cmp(&b.device)));
    rows
}

/// The devices whose reads and writes took the cycle's block I/O time,
/// slowest per request among those that did enough I/O first; amount is
/// the device's mean latency, share its part of the time all took.
fn slow_devices(s: &Subjects) -> Vec<Culprit> {
    let total: u64 = s.block_devices.iter().map(|d| d.sum_ns).sum();
    let mut devices: Vec<&BlockDelta> = s
        .block_devices
        .iter()
        .filter(|d| d.requests >= BLOCK_MIN_REQUESTS)
        .collect();
    devices.sort_by(|a, b| b.mean_seconds().total_cmp(&a.mean_seconds()));
    devices
        .into_iter()
        .map(|d| Culprit {
            kind: CulpritKind::Device,
            device: Some(d.device.clone()),
            measure: "block_io_mean_latency_seconds",
            amount: d.mean_seconds(),
            share: share(d.sum_ns as f64, total as f64),
            // The kernel's own request completions: nothing to forge.
            proven: true,
            ..Culprit::NONE
        })
        .collect()
}

/// The disks whose requests in flight have completed none for a cycle or
/// more, longest first; amount is how long, share the disk's part of the
/// requests so stuck.
fn stalled_devices(s: &Subjects) -> Vec<Culprit> {
    let mut stalled: Vec<&crate::diskstats::Stall> =
        s.block_stalls.iter().filter(|d| d.seconds > 0.0).collect();
    let stuck: u64 = stalled.iter().map(|d| d.in_flight).sum();
    stalled.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    stalled
        .into_iter()
        .map(|d| Culprit {
            kind: CulpritKind::Device,
            device: Some(d.device.clone()),
            measure: "block_io_stalled_seconds",
            amount: d.seconds,
            share: share(d.in_flight as f64, stuck as f64),
            // The kernel's own request accounting: nothing to forge.
            proven: true,
            ..Culprit::NONE
        })
        .collect()
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

/// How specific a culprit's measure is, for an anomaly whose culprits
/// come from a fallback in some cycles: retransmits to a peer beat drop
/// reasons, which beat a peer's mere packets.
pub fn measure_rank(measure: &str) -> u8 {
    match measure {
        "inbound_packets_per_second" => 0,
        "packet_drops_per_second" => 1,
        _ => 2,
    }
}

/// Drops of one reason on one device (or with none) in a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropDelta {
    pub reason: String,
    /// The interface and its namespace; None for packets without a
    /// device (dropped before routing gave them one, or by a socket).
    pub device: Option<(String, String)>,
    pub drops: u64,
    /// A device's drops counted one in N in the cycle (see
    /// [`Culprit::sample_period`]).
    pub sample_period: Option<u64>,
}

/// What one reason dropped of the packets between this node and one
/// remote address in a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropPeerDelta {
    pub reason: String,
    pub peer: IpAddr,
    pub drops: u64,
}

/// What each (reason, source, destination) dropped between the two
/// snapshots (a triple the kernel made room for and counted again starts
/// from zero), teardown's reasons left out.
fn drop_peer_deltas(prev: &Snapshot, now: &Snapshot) -> Vec<PeerDrops> {
    let (Some(p), Some(n)) = (prev.reading::<Drops>(), now.reading::<Drops>()) else {
        return Vec::new();
    };
    let before: HashMap<(&str, IpAddr, IpAddr), u64> = p
        .peers
        .iter()
        .map(|d| ((d.reason.as_str(), d.src, d.dst), d.drops))
        .collect();
    n.peers
        .iter()
        .filter(|d| is_loss(&d.reason))
        .filter_map(|d| {
            let drops = match before.get(&(d.reason.as_str(), d.src, d.dst)) {
                Some(&b) if d.drops >= b => d.drops - b,
                _ => d.drops,
            };
            (drops > 0).then(|| PeerDrops { drops, ..d.clone() })
        })
        .collect()
}

/// The drops per (reason, remote address), most first: the remote end is
/// the address that is not this node's (the destination of what it sent,
/// the source of what it received); between two addresses that are not
/// (forwarded, a pod's), the sender.
fn drop_peers(deltas: Vec<PeerDrops>, own: &[IpAddr]) -> Vec<DropPeerDelta> {
    let mut by_peer: HashMap<(String, IpAddr), u64> = HashMap::new();
    for d in deltas {
        let peer = if own.contains(&d.src) { d.dst } else { d.src };
        *by_peer.entry((d.reason, peer)).or_default() += d.drops;
    }
    let mut rows: Vec<DropPeerDelta> = by_peer
        .into_iter()
        .map(|((reason, peer), drops)| DropPeerDelta {
            reason,
            peer,
            drops,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.drops
            .cmp(&a.drops)
            .then_with(|| (&a.reason, a.peer).cmp(&(&b.reason, b.peer)))
    });
    rows
}

/// The remote address behind most of `reason`'s drops this cycle, if one
/// is (more than half of those whose packets had an IP header).
fn main_drop_peer(s: &Subjects, reason: &str) -> Option<IpAddr> {
    let mut of_reason = s.drop_peers.iter().filter(|d| d.reason == reason);
    let top = of_reason.next()?;
    let rest: u64 = of_reason.map(|d| d.drops).sum();
    (top.drops > rest).then_some(top.peer)
}

/// What each (reason, device) dropped between the two snapshots, most
/// first, teardown's reasons left out; drops of a reason beyond its
/// devices' count as device-less.
fn drop_deltas(prev: &Snapshot, now: &Snapshot) -> Vec<DropDelta> {
    let (Some(p), Some(n)) = (prev.reading::<Drops>(), now.reading::<Drops>()) else {
        return Vec::new();
    };
    // The period in force in the cycle: the one set at its start, or at
    // its end when a flood began in it.
    let period = p.device_sample_period.max(n.device_sample_period);
    let sample_period = (period > 1).then_some(period);
    // Counters restart below their old value when a series is removed.
    let delta = |now: u64, before: Option<u64>| match before {
        Some(b) if now >= b => now - b,
        _ => now,
    };
    let mut rows: Vec<DropDelta> = Vec::new();
    for d in n.devices.iter().filter(|d| is_loss(&d.reason)) {
        let before = p
            .devices
            .iter()
            .find(|o| o.netns == d.netns && o.interface == d.interface && o.reason == d.reason)
            .map(|o| o.drops);
        let drops = delta(d.drops, before);
        if drops > 0 {
            rows.push(DropDelta {
                reason: d.reason.clone(),
                device: Some((d.interface.clone(), d.netns.clone())),
                drops,
                sample_period,
            });
        }
    }
    for (reason, total) in n.reasons.iter().filter(|(r, _)| is_loss(r)) {
        let before = p.reasons.iter().find(|(r, _)| r == reason).map(|(_, v)| *v);
        let on_devices: u64 = rows
            .iter()
            .filter(|r| &r.reason == reason)
            .map(|r| r.drops)
            .sum();
        let rest = delta(*total, before).saturating_sub(on_devices);
        if rest > 0 {
            rows.push(DropDelta {
                reason: reason.clone(),
                device: None,
                drops: rest,
                sample_period: None,
            });
        }
    }
    rows.sort_by(|a, b| b.drops.cmp(&a.drops).then(a.reason.cmp(&b.reason)));
    rows
}

/// The drop reasons (and devices) behind a cycle's drops.
fn drop_reasons(s: &Subjects) -> Vec<Culprit> {
    let dt = s.seconds.max(1e-9);
    let total: u64 = s.drops.iter().map(|d| d.drops).sum();
    s.drops
        .iter()
        .map(|d| Culprit {
            kind: CulpritKind::Drop,
            peer: main_drop_peer(s, &d.reason),
            reason: Some(d.reason.clone()),
            interface: d.device.as_ref().map(|(i, _)| i.clone()),
            netns: d.device.as_ref().map(|(_, ns)| ns.clone()),
            sample_period: d.sample_period,
            measure: "packet_drops_per_second",
            amount: d.drops as f64 / dt,
            share: share(d.drops as f64, total as f64),
            // The kernel's own reason: nothing to forge.
            proven: true,
            ..Culprit::NONE
        })
        .collect()
}

/// Every cgroup whose run-queue totals grew between the two snapshots,
/// per second, longest wait first (a cgroup new in `now`, or evicted and
/// back, counts from zero); `added` is left for [`CpuUsual`].
fn cgroup_cpu(prev: &Snapshot, now: &Snapshot, dt: f64) -> Vec<CgroupCpu> {
    fn totals(s: &Snapshot) -> &[CgroupTotals] {
        s.reading::<RunQueue>()
            .map_or(&[], |r| r.cgroup_totals.as_slice())
    }
    let before: HashMap<u64, CgroupTotals> = totals(prev).iter().map(|t| (t.id, *t)).collect();
    let mut grown: Vec<CgroupTotals> = totals(now)
        .iter()
        .map(|t| {
            let t0 = before.get(&t.id).copied().unwrap_or_default();
            // A cgroup evicted and re-added restarts below its old total.
            if t.wait_ns >= t0.wait_ns && t.run_ns >= t0.run_ns {
                CgroupTotals {
                    id: t.id,
                    wait_ns: t.wait_ns - t0.wait_ns,
                    waits: t.waits.saturating_sub(t0.waits),
                    run_ns: t.run_ns - t0.run_ns,
                }
            } else {
                *t
            }
        })
        .filter(|d| d.wait_ns > 0 || d.run_ns > 0)
        .collect();
    grown.sort_by(|a, b| b.wait_ns.cmp(&a.wait_ns).then(a.id.cmp(&b.id)));
    grown
        .into_iter()
        .map(|d| CgroupCpu {
            id: d.id,
            waited: d.wait_ns as f64 / 1e9 / dt,
            waits: d.waits as f64 / dt,
            ran: d.run_ns as f64 / 1e9 / dt,
            added: 0.0,
        })
        .collect()
}

/// Culprits kept per anomaly.
pub const CULPRITS_KEPT: usize = 3;

/// The subjects behind anomaly `kind`, heaviest first, each with its share
/// of the cycle's total of what it is measured by: the source peers of a
/// traffic feature (of the kind's protocol), the parents of an exec or fork
/// storm, the processes of a syscall storm, the cgroups of CPU saturation.
/// `moved`: the features that evidence it this cycle, where a kind has
/// more than one (packet loss: retransmits name peers, drops reasons).
pub fn culprits(kind: &str, moved: &[&str], s: &Subjects) -> Vec<Culprit> {
    let mut out = match kind {
        // Who opened the connections (or tried to): a peer's bulk stream
        // on the same interface carries more packets but opens none, and
        // a storm elsewhere (an interface not watched) has no opener here.
        "syn_flood" | "connection_storm" | "connection_refusals" => {
            flow_openers(s, Some(IPPROTO_TCP))
        }
        // A scan probes with whatever protocol it scans (SYN, UDP, ...).
        "port_scan" => flow_openers(s, None),
        "udp_flood" => peers_of(s, &[IPPROTO_UDP]),
        "icmp_flood" => peers_of(s, &[IPPROTO_ICMP, IPPROTO_ICMPV6]),
        "fragment_flood" => fragment_senders(s),
        "traffic_surge" => peers_of(s, &[]),
        // The peers this node retransmitted to when retransmits moved,
        // else the kernel's drop reasons (a drop names its reason and
        // interface, not a sender: the heaviest sender is a guess).
        "packet_loss" => {
            let retransmits = || {
                tcp_peers_by(
                    s,
                    "tcp_retransmits_per_second",
                    |d| d.retransmits as f64,
                    |d, dt| d.retransmits as f64 / dt,
                )
            };
            // Each moved feature's culprits, the feature that moved most
            // first; two causes at once (a drop rule here, retransmits to
            // a peer there) both stay in the list.
            let mut lists: Vec<Vec<Culprit>> = moved
                .iter()
                .filter_map(|&f| match f {
                    "tcp_retransmits_per_second" => Some(retransmits()),
                    "packet_drops_per_second" => Some(drop_reasons(s)),
                    _ => None,
                })
                .filter(|l| !l.is_empty())
                .collect();
            if lists.is_empty() {
                lists.push(drop_reasons(s));
            }
            merge_culprits(lists)
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
        "cpu_saturation" => cpu_cgroups_of(s),
        "io_latency_regression" => slow_devices(s),
        "io_stall" => stalled_devices(s),
        _ => Vec::new(),
    };
    out.truncate(CULPRITS_KEPT);
    let pods = crate::pods::cache();
    for c in &mut out {
        c.pod = match c.kind {
            CulpritKind::Process => c.pid.and_then(|pid| pods.resolve_pid(pid)),
            CulpritKind::Cgroup => c.cgroup.as_deref().and_then(|path| pods.resolve(path)),
            // A peer that is a pod of this node; drops on a pod's veth.
            CulpritKind::Peer => c.peer.and_then(|ip| pods.resolve_ip(&ip.to_string())),
            CulpritKind::Drop => c.interface.as_deref().and_then(|interface| {
                pods.resolve_interface(c.netns.as_deref().unwrap_or("host"), interface)
            }),
            // A node's disk is no pod's.
            CulpritKind::Device => None,
        };
    }
    out
}

/// The lists' culprits in one: the first list's heaviest two, then the
/// next lists' heaviest, then the rest, at most [`CULPRITS_KEPT`].
fn merge_culprits(lists: Vec<Vec<Culprit>>) -> Vec<Culprit> {
    let mut lists: Vec<std::vec::IntoIter<Culprit>> =
        lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    if let Some(first) = lists.first_mut() {
        out.extend(first.by_ref().take(CULPRITS_KEPT - 1));
    }
    for list in lists.iter_mut().skip(1) {
        out.extend(list.next());
    }
    for list in &mut lists {
        out.extend(list.by_ref());
    }
    out.truncate(CULPRITS_KEPT);
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
/// peer) by packets. ICMPv6 link control counts only with every protocol,
/// as the ICMP feature leaves it out.
fn peers_of(s: &Subjects, protocols: &[u8]) -> Vec<Culprit> {
    let every = protocols.is_empty();
    let wanted = |p: u8| every || protocols.contains(&p);
    let total: u64 = s
        .inbound_totals
        .iter()
        .filter(|(p, _)| wanted(**p))
        .map(|(_, t)| t.0)
        .sum::<u64>()
        + if every { s.inbound_link_control.0 } else { 0 };
    inbound_peers_by(
        s,
        |r| wanted(r.protocol) && (every || !r.link_control),
        "inbound_packets_per_second",
        |r| r.packets,
        total,
    )
}

/// Inbound peers by the IP fragments they sent (of whatever protocol the
/// datagrams carry).
fn fragment_senders(s: &Subjects) -> Vec<Culprit> {
    inbound_peers_by(
        s,
        |r| r.fragments,
        "inbound_fragments_per_second",
        |r| r.packets,
        s.inbound_fragments.0,
    )
}

/// Why a traffic kind names no peer: its culprits come from the watched
/// interfaces' flows, while the TCP features count the whole node.
pub fn unattributed_note(kind: &str) -> Option<&'static str> {
    matches!(
        kind,
        "syn_flood"
            | "port_scan"
            | "connection_storm"
            | "connection_refusals"
            | "udp_flood"
            | "icmp_flood"
            | "fragment_flood"
            | "traffic_surge"
    )
    .then_some(
        "no watched interface saw who sent this traffic: it crossed an interface Sonde \
         does not watch ([network] interfaces), or stayed on this node",
    )
}

/// Inbound peers by the flows they opened this cycle, of `protocol` or
/// (None) of every protocol, summed per peer (none opened, not named).
fn flow_openers(s: &Subjects, protocol: Option<u8>) -> Vec<Culprit> {
    let wanted = |p: u8| protocol.is_none_or(|want| want == p);
    let total: u64 = s
        .inbound_new_flows
        .iter()
        .filter(|(p, _)| wanted(**p))
        .map(|(_, n)| n)
        .sum();
    inbound_peers_by(
        s,
        |r| wanted(r.protocol),
        "inbound_new_flows_per_second",
        |r| r.new_flows,
        total,
    )
}

/// The cycle's `wanted` inbound rows by `weight` (rows that weigh
/// something, summed per peer, whose protocol is then "ip"), heaviest
/// first, each with its share of `total`.
fn inbound_peers_by(
    s: &Subjects,
    wanted: impl Fn(&crate::signals::packets::InboundPeer) -> bool,
    measure: &'static str,
    weight: impl Fn(&crate::signals::packets::InboundPeer) -> u64,
    total: u64,
) -> Vec<Culprit> {
    let dt = s.seconds.max(1e-9);
    // (peer, its protocol if only one, weight, bytes)
    let mut rows: Vec<(IpAddr, Option<u8>, u64, u64)> = Vec::new();
    for r in s.inbound.iter().filter(|r| wanted(r) && weight(r) > 0) {
        match rows.iter_mut().find(|e| e.0 == r.peer) {
            Some(e) => {
                e.1 = None;
                e.2 += weight(r);
                e.3 += r.bytes;
            }
            None => rows.push((r.peer, Some(r.protocol), weight(r), r.bytes)),
        }
    }
    rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .map(|(peer, protocol, amount, bytes)| Culprit {
            kind: CulpritKind::Peer,
            peer: Some(peer),
            protocol: Some(protocol.map_or("ip", protocol_name)),
            measure,
            amount: amount as f64 / dt,
            bytes_per_second: Some(bytes as f64 / dt),
            share: share(amount as f64, total as f64),
            proven: false,
            ..Culprit::NONE
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
    // The TCP tracepoints see every namespace: a socket in a pod or test
    // namespace on this node names this node's own address as its peer,
    // which says nothing about where the trouble is. Never named.
    let peers: Vec<&(IpAddr, TcpPeerDelta)> = s
        .tcp_peers
        .iter()
        .filter(|(p, _)| !s.own_addresses.contains(p))
        .collect();
    let total: f64 = peers.iter().map(|(_, d)| weight(d)).sum();
    let mut rows: Vec<(IpAddr, f64, &TcpPeerDelta)> = peers
        .into_iter()
        .map(|(p, d)| (*p, weight(d), d))
        .filter(|(_, v, _)| *v > 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .map(|(peer, v, d)| Culprit {
            kind: CulpritKind::Peer,
            peer: Some(peer),
            protocol: Some("tcp"),
            measure,
            amount: amount(d, dt),
            share: share(v, total),
            // Retransmits count SYNs too: a handshake is not implied.
            proven: false,
            ..Culprit::NONE
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
            pid: Some(*pid),
            comm: Some(comm_of(*pid)),
            cgroup: Some(crate::cgroup::name(churn.cgroup_id)),
            measure: "child_execs_and_exits_per_second",
            amount: churn.events as f64 / dt,
            share: share(churn.events as f64, total as f64),
            proven: true,
            ..Culprit::NONE
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
            share: share(value(c) as f64, total as f64),
            proven: true,
            ..Culprit::NONE
        })
        .collect()
}

/// CPU contention's cgroups ([`Subjects::cpu_ranked`]) as culprits.
fn cpu_cgroups_of(s: &Subjects) -> Vec<Culprit> {
    let (measure, amount, takers) = s.cpu_ranked();
    let total: f64 = takers.iter().map(|c| amount(c)).sum();
    takers
        .into_iter()
        .take(CULPRITS_KEPT)
        .map(|c| Culprit {
            kind: CulpritKind::Cgroup,
            cgroup: Some(crate::cgroup::name(c.id)),
            measure,
            amount: amount(c),
            share: share(amount(c), total),
            proven: true,
            ..Culprit::NONE
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
    pub block: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (id, wait ns, waits, run ns) per cgroup, cumulative.
    fn with_totals(totals: &[(u64, u64, u64, u64)]) -> Snapshot {
        let reading = RunQueue {
            cgroup_totals: totals
                .iter()
                .map(|&(id, wait_ns, waits, run_ns)| CgroupTotals {
                    id,
                    wait_ns,
                    waits,
                    run_ns,
                })
                .collect(),
            ..Default::default()
        };
        Snapshot {
            signals: vec![("runqueue", std::sync::Arc::new(reading))],
            ..Default::default()
        }
    }

    #[test]
    fn the_cgroup_that_waited_most_this_cycle_comes_first_not_the_oldest() {
        // Cgroup 1 waited longest in all, cgroup 2 most this cycle; 3 is new.
        let prev = with_totals(&[(1, 50_000_000_000, 900, 0), (2, 1_000_000_000, 100, 0)]);
        let now = with_totals(&[
            (1, 50_100_000_000, 910, 0),
            (2, 4_000_000_000, 400, 3_000_000_000),
            (3, 500_000_000, 10, 0),
        ]);
        let c = cgroup_cpu(&prev, &now, 2.0);
        assert_eq!(c.iter().map(|c| c.id).collect::<Vec<_>>(), [2, 3, 1]);
        assert!((c[0].waited - 1.5).abs() < 1e-9, "{c:?}");
        assert!((c[0].waits - 150.0).abs() < 1e-9, "{c:?}");
        assert!((c[0].ran - 1.5).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn a_cgroup_evicted_and_back_counts_from_zero() {
        let prev = with_totals(&[(7, 9_000_000_000, 90, 5_000)]);
        let now = with_totals(&[(7, 2_000_000_000, 20, 1_000_000_000)]);
        let c = cgroup_cpu(&prev, &now, 1.0);
        assert_eq!(
            (c[0].id, c[0].waited, c[0].waits, c[0].ran),
            (7, 2.0, 20.0, 1.0)
        );
        assert!(cgroup_cpu(&now, &now, 1.0).is_empty());
    }

    /// CPU contention names who took the CPUs: a newcomer's hogs, not the
    /// node's steady load in the root cgroup, whose many tasks wait longer
    /// in all; with no newcomer, the longest waiters.
    #[test]
    fn cpu_contention_names_the_cgroup_that_took_more_than_usual() {
        let (root, hogs) = (1, 9);
        let mut usual = CpuUsual::default();
        let cycle = |usual: &mut CpuUsual, rows: &[CgroupCpu], hold: bool| {
            let mut rows = rows.to_vec();
            usual.observe(&mut rows, hold);
            Subjects {
                cgroups: rows,
                seconds: 1.0,
                ..Default::default()
            }
        };
        let cpu = |id, waited, ran| CgroupCpu {
            id,
            waited,
            waits: waited * 1_000.0,
            ran,
            added: 0.0,
        };
        for _ in 0..100 {
            cycle(&mut usual, &[cpu(root, 0.05, 0.6)], false);
        }
        let steady = cycle(&mut usual, &[cpu(root, 0.05, 0.6)], false);
        assert_eq!(steady.cpu_taker().map(|c| c.id), Some(root));
        assert_eq!(
            cpu_cgroups_of(&steady)[0].measure,
            "cpu_wait_seconds_per_second"
        );
        // The hogs start: the root's tasks now wait four times as long as
        // the hogs', and run less.
        let contended = [cpu(root, 4.0, 0.45), cpu(hogs, 1.0, 1.4)];
        let s = cycle(&mut usual, &contended, false);
        assert_eq!(s.cpu_taker().map(|c| c.id), Some(hogs));
        let culprits = cpu_cgroups_of(&s);
        assert_eq!(culprits.len(), 1, "{culprits:?}");
        assert_eq!(culprits[0].measure, "cpu_seconds_added_per_second");
        assert!((culprits[0].amount - 1.4).abs() < 1e-9, "{culprits:?}");
        assert!((culprits[0].share - 1.0).abs() < 1e-9, "{culprits:?}");
        let said = s.describe_cpu_taker().unwrap();
        assert!(
            said.contains("ran 1.40 CPU s per second, 1.40 above its usual"),
            "{said}"
        );
        // Held while the anomaly is open: the hogs do not become usual.
        for _ in 0..100 {
            cycle(&mut usual, &contended, true);
        }
        let s = cycle(&mut usual, &contended, true);
        assert_eq!(s.cpu_taker().map(|c| c.id), Some(hogs));
        // Learned once it is over: they would be usual in time.
        for _ in 0..200 {
            cycle(&mut usual, &contended, false);
        }
        let s = cycle(&mut usual, &contended, false);
        assert_eq!(s.cpu_taker().map(|c| c.id), Some(root));
    }

    #[test]
    fn a_cgroup_gone_is_forgotten() {
        let mut usual = CpuUsual::default();
        let mut rows = vec![CgroupCpu {
            id: 4,
            ran: 1.0,
            ..Default::default()
        }];
        usual.observe(&mut rows, false);
        assert_eq!(usual.usual.len(), 1);
        for _ in 0..1_000 {
            usual.observe(&mut [], false);
        }
        assert!(usual.usual.is_empty(), "{:?}", usual.usual);
    }

    /// A connection storm's culprit is who opened the connections: not the
    /// peer whose bulk stream carries more packets, and nobody when the
    /// watched interfaces saw no new flows (the storm was elsewhere).
    #[test]
    fn handshake_kinds_name_the_peers_that_opened_flows() {
        use crate::signals::packets::InboundPeer;
        let bulk: IpAddr = "10.9.0.3".parse().unwrap();
        let storm: IpAddr = "10.9.0.2".parse().unwrap();
        let row = |peer, packets, new_flows| InboundPeer {
            peer,
            protocol: IPPROTO_TCP,
            link_control: false,
            fragments: false,
            packets,
            bytes: packets * 100,
            new_flows,
        };
        let subjects = Subjects {
            inbound: vec![row(bulk, 9_000, 0), row(storm, 3_000, 1_000)],
            inbound_totals: [(IPPROTO_TCP, (12_000, 1_200_000))].into(),
            inbound_new_flows: [(IPPROTO_TCP, 1_000)].into(),
            seconds: 1.0,
            ..Default::default()
        };
        for kind in [
            "connection_storm",
            "syn_flood",
            "connection_refusals",
            "port_scan",
        ] {
            let c = culprits(kind, &[], &subjects);
            assert_eq!(c.len(), 1, "{kind}: {c:?}");
            assert_eq!(c[0].peer, Some(storm), "{kind}");
            assert_eq!(c[0].share, 1.0);
            assert!(
                c[0].describe()
                    .starts_with("peer 10.9.0.2 opened 100% of new inbound tcp flows"),
                "{}",
                c[0].describe()
            );
        }
        // The bulk peer alone: it opened nothing, so it is not named.
        let quiet = Subjects {
            inbound: vec![row(bulk, 9_000, 0)],
            ..subjects.clone()
        };
        assert!(culprits("connection_storm", &[], &quiet).is_empty());
        // A scan names its prober whatever the protocol it probes with.
        let udp_scan = Subjects {
            inbound: vec![InboundPeer {
                protocol: IPPROTO_UDP,
                ..row(storm, 300, 300)
            }],
            inbound_new_flows: [(IPPROTO_UDP, 300)].into(),
            ..subjects.clone()
        };
        let c = culprits("port_scan", &[], &udp_scan);
        assert_eq!((c[0].peer, c[0].protocol), (Some(storm), Some("udp")));
        assert!(culprits("syn_flood", &[], &udp_scan).is_empty());
        // Traffic kinds still go by packets.
        assert_eq!(
            culprits("traffic_surge", &[], &subjects)[0].peer,
            Some(bulk)
        );
    }

    /// Pods' interfaces coming up send neighbour discovery from `::`: an
    /// ICMP flood's culprits leave it out (as its feature does), its
    /// shares are of ICMP without it, and a traffic surge still names it.
    #[test]
    fn icmpv6_link_control_is_no_icmp_floods_culprit() {
        use crate::signals::packets::InboundPeer;
        let dad: IpAddr = "::".parse().unwrap();
        let pinger: IpAddr = "fd00::2".parse().unwrap();
        let row = |peer, link_control, packets| InboundPeer {
            peer,
            protocol: IPPROTO_ICMPV6,
            link_control,
            fragments: false,
            packets,
            bytes: packets * 90,
            new_flows: 0,
        };
        let subjects = Subjects {
            inbound: vec![row(dad, true, 6_000), row(pinger, false, 2_000)],
            inbound_totals: [(IPPROTO_ICMPV6, (2_000, 180_000))].into(),
            inbound_link_control: (6_000, 540_000),
            seconds: 1.0,
            ..Default::default()
        };
        let icmp = culprits("icmp_flood", &[], &subjects);
        assert_eq!(icmp.len(), 1, "{icmp:?}");
        assert_eq!((icmp[0].peer, icmp[0].share), (Some(pinger), 1.0));
        let surge = culprits("traffic_surge", &[], &subjects);
        assert_eq!((surge[0].peer, surge[0].share), (Some(dad), 0.75));
    }

    /// A drop reason names the remote address most of its drops were
    /// to or from: the destination of what this node sent, the source of
    /// what it received; a triple the kernel made room for and counted
    /// again starts from zero; a reason spread over peers names none.
    #[test]
    fn drop_culprits_name_the_peer_behind_most_drops() {
        use crate::signals::drops::PeerDrops;
        let own: IpAddr = "10.9.0.1".parse().unwrap();
        let far: IpAddr = "10.9.0.2".parse().unwrap();
        let other: IpAddr = "10.9.0.3".parse().unwrap();
        let snapshot = |peers: &[(&str, IpAddr, IpAddr, u64)], total: u64| {
            let reading = Drops {
                reasons: vec![("netfilter_drop".into(), total)],
                peers: peers
                    .iter()
                    .map(|&(reason, src, dst, drops)| PeerDrops {
                        reason: reason.into(),
                        src,
                        dst,
                        drops,
                    })
                    .collect(),
                ..Default::default()
            };
            Snapshot {
                signals: vec![("drops", std::sync::Arc::new(reading))],
                ..Default::default()
            }
        };
        let prev = snapshot(
            &[
                ("netfilter_drop", own, far, 100),
                ("no_socket", other, own, 9),
            ],
            100,
        );
        let now = snapshot(
            &[
                // Sent to the far peer and dropped here (OUTPUT).
                ("netfilter_drop", own, far, 160),
                // Received from another, evicted and counted again.
                ("netfilter_drop", other, own, 20),
                ("queue_purge", own, other, 500),
            ],
            180,
        );
        let deltas = drop_peer_deltas(&prev, &now);
        let rows = drop_peers(deltas, &[own]);
        assert_eq!(
            rows,
            [
                DropPeerDelta {
                    reason: "netfilter_drop".into(),
                    peer: far,
                    drops: 60,
                },
                DropPeerDelta {
                    reason: "netfilter_drop".into(),
                    peer: other,
                    drops: 20,
                },
            ],
            "teardown (queue_purge) is no loss"
        );
        let subjects = Subjects {
            drops: drop_deltas(&prev, &now),
            drop_peers: rows.clone(),
            seconds: 1.0,
            ..Default::default()
        };
        let c = culprits("packet_loss", &["packet_drops_per_second"], &subjects);
        assert_eq!((c[0].kind, c[0].peer), (CulpritKind::Drop, Some(far)));
        assert!(
            c[0].describe()
                .ends_with("most of them to or from 10.9.0.2"),
            "{}",
            c[0].describe()
        );
        // Half and half: nobody is behind most of them.
        let even = Subjects {
            drop_peers: vec![
                DropPeerDelta {
                    drops: 20,
                    ..rows[0].clone()
                },
                rows[1].clone(),
            ],
            ..subjects
        };
        assert_eq!(culprits("packet_loss", &[], &even)[0].peer, None);
    }

    /// Packet loss without retransmitting peers is named by the kernel's
    /// drop reasons, with the interface; drops of a reason beyond its
    /// devices' count as device-less; a series removed and re-added
    /// restarts from zero; teardown is not named.
    #[test]
    fn drops_are_named_by_reason_and_interface() {
        use crate::signals::drops::DeviceDrops;
        let drops = |devices: &[(&str, &str, u64)], reasons: &[(&str, u64)]| {
            let reading = Drops {
                reasons: reasons.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
                devices: devices
                    .iter()
                    .map(|(i, r, n)| DeviceDrops {
                        netns: "host".into(),
                        interface: (*i).to_owned(),
                        reason: (*r).to_owned(),
                        drops: *n,
                    })
                    .collect(),
                peers: Vec::new(),
                series_removed: 0,
                device_sample_period: 1,
            };
            Snapshot {
                signals: vec![("drops", std::sync::Arc::new(reading))],
                ..Default::default()
            }
        };
        let prev = drops(
            &[("eth0", "NETFILTER_DROP", 100), ("eth1", "NO_SOCKET", 50)],
            &[("NETFILTER_DROP", 100), ("NO_SOCKET", 70)],
        );
        // A veth deleted meanwhile purged its queue: teardown, not loss;
        // a capture that fell behind lost its copies, not the packets.
        let now = drops(
            &[
                ("eth0", "NETFILTER_DROP", 1_000),
                ("eth1", "NO_SOCKET", 5),
                ("veth9", "queue_purge", 500),
                ("eth0", "packet_sock_error", 300),
            ],
            &[
                ("NETFILTER_DROP", 1_000),
                ("NO_SOCKET", 125),
                ("queue_purge", 500),
                ("packet_sock_error", 300),
            ],
        );
        let d = drop_deltas(&prev, &now);
        assert_eq!(
            d,
            vec![
                DropDelta {
                    reason: "NETFILTER_DROP".into(),
                    device: Some(("eth0".into(), "host".into())),
                    drops: 900,
                    sample_period: None,
                },
                DropDelta {
                    reason: "NO_SOCKET".into(),
                    device: None,
                    drops: 50,
                    sample_period: None,
                },
                DropDelta {
                    reason: "NO_SOCKET".into(),
                    device: Some(("eth1".into(), "host".into())),
                    drops: 5,
                    sample_period: None,
                },
            ]
        );
        let subjects = Subjects {
            drops: d,
            seconds: 1.0,
            ..Default::default()
        };
        let c = culprits("packet_loss", &["packet_drops_per_second"], &subjects);
        assert_eq!(c[0].kind, CulpritKind::Drop);
        assert_eq!(c[0].name(), "NETFILTER_DROP on eth0");
        assert!((c[0].share - 900.0 / 955.0).abs() < 1e-9);
        assert_eq!(c[1].name(), "NO_SOCKET");
        assert!(
            c[0].describe()
                .starts_with("drop reason NETFILTER_DROP on eth0: 94% of packet drops"),
            "{}",
            c[0].describe()
        );
        // Retransmits elsewhere on the node name their peer only when
        // retransmits are what moved.
        let peer: IpAddr = "10.9.0.3".parse().unwrap();
        let busy = Subjects {
            tcp_peers: vec![(
                peer,
                TcpPeerDelta {
                    retransmits: 4,
                    ..Default::default()
                },
            )],
            ..subjects.clone()
        };
        let by_drops = culprits("packet_loss", &["packet_drops_per_second"], &busy);
        assert_eq!(by_drops[0].kind, CulpritKind::Drop);
        let by_retransmits = culprits("packet_loss", &["tcp_retransmits_per_second"], &busy);
        assert_eq!(by_retransmits[0].peer, Some(peer));
        // Both moved: both causes listed, the one that moved most first.
        let both = culprits(
            "packet_loss",
            &["packet_drops_per_second", "tcp_retransmits_per_second"],
            &busy,
        );
        let names: Vec<String> = both.iter().map(Culprit::name).collect();
        assert_eq!(names, ["NETFILTER_DROP on eth0", "NO_SOCKET", "10.9.0.3"]);
        // This node's own address, retransmitted to from a namespace on it,
        // is never named: alone, the drop reasons name the loss.
        let own: IpAddr = "10.9.0.1".parse().unwrap();
        let mut both_ways = busy.clone();
        both_ways.tcp_peers.push((
            own,
            TcpPeerDelta {
                retransmits: 40,
                ..Default::default()
            },
        ));
        both_ways.own_addresses = vec![own];
        let named = culprits("packet_loss", &["tcp_retransmits_per_second"], &both_ways);
        assert_eq!(named[0].peer, Some(peer));
        assert_eq!(named[0].share, 1.0);
        both_ways.tcp_peers.retain(|(p, _)| *p == own);
        let named = culprits("packet_loss", &["tcp_retransmits_per_second"], &both_ways);
        assert_eq!(named[0].kind, CulpritKind::Drop);
        // A retransmitting peer outranks them, and they outrank packets.
        assert!(measure_rank("tcp_retransmits_per_second") > measure_rank(c[0].measure));
        assert!(measure_rank(c[0].measure) > measure_rank("inbound_packets_per_second"));
    }

    /// During a flood of drops the split by interface is sampled: a drop
    /// culprit on an interface says its figures are estimates; the rest
    /// without a device (from the exact count by reason) does not.
    #[test]
    fn sampled_drops_by_interface_are_named_as_estimates() {
        use crate::signals::drops::DeviceDrops;
        let drops = |on_eth0: u64, total: u64, period: u64| {
            let reading = Drops {
                reasons: vec![("netfilter_drop".into(), total)],
                devices: vec![DeviceDrops {
                    netns: "host".into(),
                    interface: "eth0".into(),
                    reason: "netfilter_drop".into(),
                    drops: on_eth0,
                }],
                device_sample_period: period,
                ..Default::default()
            };
            Snapshot {
                signals: vec![("drops", std::sync::Arc::new(reading))],
                ..Default::default()
            }
        };
        // The flood began in the cycle: the period set at its end counts.
        let d = drop_deltas(&drops(0, 0, 1), &drops(64_000, 64_010, 64));
        assert_eq!((d[0].drops, d[0].sample_period), (64_000, Some(64)));
        assert_eq!(
            (d[1].drops, &d[1].device, d[1].sample_period),
            (10, &None, None)
        );
        let subjects = Subjects {
            drops: d,
            seconds: 1.0,
            ..Default::default()
        };
        let c = culprits("packet_loss", &["packet_drops_per_second"], &subjects);
        assert_eq!(c[0].sample_period, Some(64));
        assert!(
            c[0].describe()
                .contains("(64000/s), estimated from one drop in 64"),
            "{}",
            c[0].describe()
        );
        assert_eq!(c[1].sample_period, None);
        // Exact again: nothing said.
        let d = drop_deltas(&drops(64_000, 64_010, 1), &drops(64_100, 64_110, 1));
        assert_eq!(d[0].sample_period, None);
    }

    #[test]
    fn io_latency_names_the_slowest_device_that_did_enough_io() {
        use agent_common::block::BlockStats;
        let t0 = std::time::Instant::now();
        // (device, op, requests, total ns), cumulative.
        let block = |at: f64, rows: &[(&str, &'static str, u64, u64)]| Snapshot {
            taken_at: Some(t0 + std::time::Duration::from_secs_f64(at)),
            signals: vec![(
                "block",
                std::sync::Arc::new(Block {
                    rows: rows
                        .iter()
                        .map(|&(d, op, requests, sum_ns)| {
                            let stats = BlockStats {
                                requests,
                                sum_ns,
                                ..Default::default()
                            };
                            (d.to_owned(), op, stats)
                        })
                        .collect(),
                    stalls: Vec::new(),
                }),
            )],
            ..Default::default()
        };
        let prev = block(
            0.0,
            &[
                ("vda", "write", 1_000, 1_000_000_000),
                ("loop7", "write", 10, 10_000_000),
            ],
        );
        let now = block(
            1.0,
            &[
                // 100 writes and reads of 1 ms on the busy disk, a
                // flush of 400 ms (a cache drained, not a slow request).
                ("vda", "write", 1_060, 1_060_000_000),
                ("vda", "read", 40, 40_000_000),
                ("vda", "flush", 1, 400_000_000),
                // 20 writes of 60 ms on the slow one.
                ("loop7", "write", 30, 1_210_000_000),
                // Two slow reads on a third: too few for a mean.
                ("sdb", "read", 2, 900_000_000),
            ],
        );
        let signals = Signals {
            block: true,
            ..Default::default()
        };
        let (f, s) = features(&prev, &now, &signals).expect("a cycle");
        let mean = f["block_io_mean_latency_seconds"];
        assert!((mean - 0.06).abs() < 1e-9, "{f:?}");
        let c = culprits(
            "io_latency_regression",
            &["block_io_mean_latency_seconds"],
            &s,
        );
        let named: Vec<(String, f64)> = c.iter().map(|c| (c.name(), c.amount)).collect();
        assert_eq!(named.len(), 2, "{named:?}");
        assert_eq!(c[0].name(), "loop7", "{named:?}");
        assert!((c[0].amount - 0.06).abs() < 1e-9, "{named:?}");
        // 1.2 s of the 2.2 s reads and writes took (sdb's 0.9 s counts
        // in the total, not as a culprit; flushes in neither).
        assert!((c[0].share - 1.2 / 2.2).abs() < 1e-9, "{:?}", c[0]);
        assert_eq!(c[1].name(), "vda");
        assert_eq!(c[0].kind.label(), "device");
        assert!(
            c[0].describe()
                .starts_with("device loop7: requests took 60.0 ms"),
            "{}",
            c[0].describe()
        );
        // Nothing but the too-few reads: no mean, no feature.
        let quiet = block(2.0, &[("sdb", "read", 4, 1_800_000_000)]);
        let (f, _) = features(
            &block(1.0, &[("sdb", "read", 2, 900_000_000)]),
            &quiet,
            &signals,
        )
        .expect("a cycle");
        assert!(!f.contains_key("block_io_mean_latency_seconds"), "{f:?}");
    }
}
