//! Analyze: an online baseline per feature, learned with no training step,
//! and anomalies named from the evidence.
//!
//! Each feature keeps an exponentially weighted mean and variance. After a
//! warm-up, a value more than `k` deviations above its baseline (and above a
//! per-feature floor, so that tiny absolute changes on an idle node do not
//! alarm) is anomalous and does not update the baseline, so an incident
//! cannot teach the detector that it is normal. A one-sided CUSUM on the
//! standardised value catches slow drifts the k-deviation test misses.
//! An anomaly opens on the first anomalous cycle and closes after
//! `quiet_cycles` normal ones; its kind comes from which feature moved.
//!
//! Operators' verdicts on anomalies (false positive, confirmed) teach the
//! thresholds: each kind has a scale on `k` (and on the CUSUM alarm) that a
//! false positive widens by a quarter and a confirmation tightens by 5%,
//! within [0.5, 4]. The verdicts are counted per kind, which is the
//! detector's measured precision.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use super::monitor::{Culprit, CulpritKind};
use super::monitor::{Features, Subjects};

/// EWMA weight of a new observation.
const ALPHA: f64 = 0.05;
/// The smallest deviation, as a share of the baseline's mean.
const RELATIVE_DEVIATION: f64 = 0.25;
/// CUSUM slack (in deviations) and alarm level.
const CUSUM_SLACK: f64 = 1.0;
pub const CUSUM_ALARM: f64 = 12.0;
/// How many cycles after it opened a symptom's anomaly is renamed for a
/// cause that fires: a flood's drops cross their floor a cycle before its
/// packets do, a queue drops before its delay reaches the RTT mean.
const REFINE_CYCLES: u32 = 2;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Baseline {
    pub mean: f64,
    pub var: f64,
    pub samples: u64,
    #[serde(default)]
    pub cusum: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub feature: &'static str,
    pub baseline: f64,
    pub observed: f64,
    pub score: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub id: u64,
    pub kind: &'static str,
    pub severity: Severity,
    pub score: f64,
    pub start: f64,
    pub end: Option<f64>,
    pub evidence: Vec<Evidence>,
    /// The peer, process or cgroup the evidence names, if any: the top
    /// culprit's description unless the kind names its subject itself.
    pub subject: Option<String>,
    /// Who moved the evidence, heaviest first, with their shares. Named
    /// for reading: a culprit is not proven for blocking (plan.rs and
    /// guard.rs decide that on their own evidence).
    pub culprits: Vec<Culprit>,
    /// What else the loop found about it (a SYN flood: the kernel's SYN
    /// cookies, and why nobody is blocked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The subject's pod, namespace and container, when the container
    /// runtime names them (`[kubernetes]`, see `crate::pods`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The container's id, with its name (a podman container outside any
    /// pod has these two alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip)]
    quiet: u32,
    /// Cycles since a feature of its own kind fired (not a symptom's it
    /// absorbed): a cause explains later symptoms only while it is current.
    #[serde(skip)]
    own_quiet: u32,
    /// Cycles since it opened.
    #[serde(skip)]
    age: u32,
    /// `subject` is the top culprit's description (so it follows them).
    #[serde(skip)]
    subject_from_culprit: bool,
}

impl Anomaly {
    /// Names the subject's pod, namespace and container (the subject's
    /// own, else the top culprit's); once the container is known, kept.
    /// (A container that started a moment ago may not be in the runtime's
    /// last listing yet: its pod is known from its cgroup path, its name at
    /// a later cycle.)
    fn set_pod(&mut self, subjects: &Subjects) {
        if self.container.is_some() {
            return;
        }
        let top_culprits = || self.culprits.first().and_then(|c| c.pod.clone());
        if let Some(who) = super::monitor::subject_pod(self.kind, subjects).or_else(top_culprits) {
            self.pod = Some(who.pod).filter(|p| !p.is_empty());
            self.namespace = Some(who.namespace).filter(|n| !n.is_empty());
            self.container = who.container;
            self.container_id = who.container_id;
        }
    }
}

#[cfg(test)]
impl Anomaly {
    /// A just-opened anomaly of `kind`, for other steps' tests.
    pub fn of_kind(kind: &'static str) -> Anomaly {
        Anomaly {
            id: 1,
            kind,
            severity: Severity::Warning,
            score: 10.0,
            start: 0.0,
            end: None,
            evidence: Vec::new(),
            subject: None,
            culprits: Vec::new(),
            notes: Vec::new(),
            pod: None,
            namespace: None,
            container: None,
            container_id: None,
            quiet: 0,
            own_quiet: 0,
            age: 0,
            subject_from_culprit: false,
        }
    }
}

/// Per-feature: the anomaly kind it evidences and the smallest value that
/// may count as anomalous at all.
pub const FEATURES: &[(&str, &str, f64)] = &[
    ("syscalls_per_second", "syscall_storm", 20_000.0),
    ("syscall_error_share", "syscall_error_spike", 0.25),
    ("half_open_syn_per_second", "syn_flood", 200.0),
    ("refused_syn_per_second", "connection_refusals", 200.0),
    ("udp_in_packets_per_second", "udp_flood", 2_000.0),
    ("icmp_in_packets_per_second", "icmp_flood", 500.0),
    // Fragments of datagrams: a network whose path MTU is known sends
    // almost none (an overlay or NFS over UDP some, which the baseline
    // learns); the floor is the ICMP flood's.
    ("ip_fragments_in_per_second", "fragment_flood", 500.0),
    ("inbound_packets_per_second", "traffic_surge", 20_000.0),
    ("peer_ports_per_cycle", "port_scan", 20.0),
    ("tcp_handshakes_per_second", "connection_storm", 200.0),
    ("tcp_retransmits_per_second", "packet_loss", 5.0),
    ("packet_drops_per_second", "packet_loss", 20.0),
    ("tcp_resets_sent_per_second", "connection_refusals", 50.0),
    ("tcp_rtt_mean_seconds", "latency_regression", 0.02),
    ("tcp_connect_mean_seconds", "latency_regression", 0.02),
    ("runqueue_mean_wait_seconds", "cpu_saturation", 0.0005),
    // 0.4 tasks kept waiting behind another per CPU over a whole cycle:
    // the eval's normal load holds 0.05 (0.31 at most, as an incident's
    // hogs wind down), three hogs on two CPUs about 0.8 (the eval's
    // cpu-saturation-low), three pinned to one of two CPUs about 1.1.
    ("runqueue_waiting_per_cpu", "cpu_saturation", 0.4),
    ("process_exits_per_second", "fork_storm", 200.0),
    ("process_execs_per_second", "exec_storm", 200.0),
    // The slowest block device's mean read or write (among devices that
    // completed a few this cycle): an SSD's take well under 1 ms, a busy
    // spinning disk's 5-15 ms; 20 ms each is a saturated or failing disk.
    (
        "block_io_mean_latency_seconds",
        "io_latency_regression",
        0.02,
    ),
    // How long a disk has had requests in flight and completed none: a
    // busy disk completes some every few ms, so a whole second without
    // one is a request stuck for a second at least, on any disk but a
    // spinning one waking up.
    ("block_io_stalled_seconds", "io_stall", 1.0),
];

/// Means over events, absent in a cycle without events, whose absence
/// (while the sibling feature shows their signal ran) is an idle cycle:
/// it counts towards the warm-up of a baseline that starts at 0, so a
/// node idle all through the warm-up judges the first value against the
/// floor instead of learning it as normal. Without this, a disk that was
/// idle during the warm-up and then came back slow (62 ms a request) set
/// its own baseline and was never named (`cargo xtask eval --only` on the
/// disk incidents, which start on an idle machine). Only where the floor
/// means trouble on any node: a first TCP round trip of 30 ms is a far
/// peer, not a regression, so the RTT and connect means still learn their
/// first values.
const IDLE_WHEN_ABSENT: &[(&str, &str)] =
    &[("block_io_mean_latency_seconds", "block_io_stalled_seconds")];

/// The RTT mean's floor in a cycle that loses nothing; the table's 20 ms
/// is its floor while segments are lost. A LAN's 1 ms growing fivefold
/// with nothing lost is a queue or a longer path that users feel; while
/// segments are lost, recovery lifts the RTT mean by itself (3% random
/// loss took it from 1 to about 4 ms in the eval, and it was named a
/// latency regression when this floor applied always), so then only a
/// rise past 20 ms is a delay of its own.
const RTT_FLOOR_WITHOUT_LOSS: f64 = 0.005;

/// A feature's floor in a cycle of `features`: the table's `floor`, but
/// the RTT mean's is lower while retransmits and drops stay under their
/// own floors.
fn floor_in(feature: &str, floor: f64, features: &Features) -> f64 {
    if feature != "tcp_rtt_mean_seconds" {
        return floor;
    }
    // Loss as packet_loss itself counts it: a feature of its at its floor.
    let losing = FEATURES
        .iter()
        .filter(|f| f.1 == "packet_loss")
        .any(|&(name, _, min)| features.get(name).is_some_and(|&v| v >= min));
    if losing {
        floor
    } else {
        RTT_FLOOR_WITHOUT_LOSS
    }
}

/// Causes and the symptoms they explain, most specific cause first: when a
/// cause fires (or is already active), its symptoms join its evidence
/// instead of opening anomalies of their own, so one incident makes one
/// anomaly named for its cause. A port scan's SYNs to closed ports are
/// half-open and refused, a flood overflows queues (and, sent from this
/// node, is a syscall storm of its sender); a fork storm is
/// also a syscall storm, and a loop of failing calls too; a full queue that
/// delays packets also drops some.
pub const EXPLAINS: &[(&str, &[&str])] = &[
    (
        "port_scan",
        &[
            "syn_flood",
            "connection_refusals",
            "connection_storm",
            "fragment_flood",
            "packet_loss",
            "syscall_storm",
            "cpu_saturation",
            "traffic_surge",
        ],
    ),
    (
        "syn_flood",
        &[
            "connection_refusals",
            "packet_loss",
            "syscall_storm",
            "cpu_saturation",
            "traffic_surge",
        ],
    ),
    (
        "connection_storm",
        &[
            "connection_refusals",
            "packet_loss",
            "syscall_storm",
            "syscall_error_spike",
            "cpu_saturation",
            "traffic_surge",
        ],
    ),
    (
        "connection_refusals",
        &[
            "packet_loss",
            "syscall_storm",
            "cpu_saturation",
            "traffic_surge",
        ],
    ),
    // Fragments are their datagrams' protocol's packets too: a flood of
    // fragmented UDP or ICMP is named for its fragments, the more specific
    // evidence (and the kernel's reassembly is what it loads).
    (
        "fragment_flood",
        &[
            "udp_flood",
            "icmp_flood",
            "packet_loss",
            "syscall_storm",
            "cpu_saturation",
            "traffic_surge",
        ],
    ),
    (
        "udp_flood",
        &[
            "icmp_flood",
            "packet_loss",
            "syscall_storm",
            "cpu_saturation",
            "traffic_surge",
        ],
    ),
    (
        "icmp_flood",
        &[
            "packet_loss",
            "syscall_storm",
            "cpu_saturation",
            "traffic_surge",
        ],
    ),
    (
        "exec_storm",
        &[
            "fork_storm",
            "syscall_storm",
            "syscall_error_spike",
            "cpu_saturation",
        ],
    ),
    (
        "fork_storm",
        &["syscall_storm", "syscall_error_spike", "cpu_saturation"],
    ),
    ("syscall_error_spike", &["syscall_storm", "cpu_saturation"]),
    ("syscall_storm", &["cpu_saturation"]),
    ("latency_regression", &["packet_loss"]),
    // The stuck requests complete when the stall ends, each after
    // seconds: the same incident's tail.
    ("io_stall", &["io_latency_regression"]),
    ("traffic_surge", &["packet_loss", "cpu_saturation"]),
];

/// Gives the kept drop culprits the peer a later cycle found for the same
/// reason and interface: drops are counted per peer only from the cycle
/// after packet loss opens (MAPE-K's attribution), so the cycle whose
/// culprits were kept may have had none. Whether any was completed.
fn complete_drop_peers(kept: &mut [Culprit], now: &[Culprit]) -> bool {
    let mut completed = false;
    for c in kept
        .iter_mut()
        .filter(|c| c.kind == CulpritKind::Drop && c.peer.is_none())
    {
        if let Some(n) = now
            .iter()
            .find(|n| n.kind == CulpritKind::Drop && n.peer.is_some() && n.name() == c.name())
        {
            c.peer = n.peer;
            completed = true;
        }
    }
    completed
}

/// An anomaly's subject, culprits, and whether the subject is the top
/// culprit's description, when it is named `kind` on `evidence`.
fn named(
    kind: &str,
    evidence: &[Evidence],
    subjects: &Subjects,
) -> (Option<String>, Vec<Culprit>, bool) {
    let subject = match kind {
        // Not syn_flood: the peer with the widest fan-out is not the SYN
        // source, and a flood's sources are often forged.
        "port_scan" => subjects.widest_peer.map(|p| format!("peer {p}")),
        "fork_storm" => subjects.describe_parent(),
        "cpu_saturation" => subjects.describe_cpu_taker(),
        "syscall_storm" => super::monitor::describe_syscall_process(subjects, false),
        "syscall_error_spike" => super::monitor::describe_syscall_process(subjects, true),
        _ => None,
    };
    let moved = moved_most_first(evidence);
    let culprits = super::monitor::culprits(kind, &moved, subjects);
    let from_culprit = subject.is_none() && !culprits.is_empty();
    let subject = subject.or_else(|| culprits.first().map(Culprit::describe));
    (subject, culprits, from_culprit)
}

/// Why an anomaly of `kind` names nobody, when it has no `subject`.
fn unattributed_notes(kind: &str, subject: Option<&str>) -> Vec<String> {
    super::monitor::unattributed_note(kind)
        .filter(|_| subject.is_none())
        .map(|n| vec![n.to_owned()])
        .unwrap_or_default()
}

/// The features of `evidence`, the one that moved most first.
fn moved_most_first(evidence: &[Evidence]) -> Vec<&'static str> {
    let mut e: Vec<&Evidence> = evidence.iter().collect();
    e.sort_by(|a, b| b.score.total_cmp(&a.score));
    e.into_iter().map(|e| e.feature).collect()
}

/// The cause among `kinds` that explains `symptom` this cycle, if any.
fn explained_by<'a>(
    symptom: &str,
    mut kinds: impl Iterator<Item = &'a str>,
    subjects: &Subjects,
) -> Option<&'a str> {
    kinds.find(|cause| explains(cause, symptom, subjects))
}

/// Whether `cause` takes `symptom` as its own this cycle: the symptom is
/// one it lists ([`EXPLAINS`]), and, for CPU saturation, the only symptom
/// with culprits of its own, the CPU was taken where the cause does its
/// work. A flood's packets are handled in softirq, by the root cgroup's
/// kernel threads or whatever task they interrupt; a storm of processes
/// runs in its parent's cgroup. Cgroups elsewhere that took more of the
/// added CPU than those did are an incident of their own beside it (hogs
/// starting with a flood were hidden by it); a storm of calls keeps its
/// CPU load whoever ran it, as before.
fn explains(cause: &str, symptom: &str, subjects: &Subjects) -> bool {
    let listed = EXPLAINS
        .iter()
        .any(|(c, symptoms)| *c == cause && symptoms.contains(&symptom));
    if !listed || symptom != "cpu_saturation" {
        return listed;
    }
    let mut own = vec![crate::cgroup::ROOT_ID];
    match cause {
        "syscall_storm" | "syscall_error_spike" => return true,
        "exec_storm" | "fork_storm" => {
            own.extend(subjects.busiest_parent.map(|(_, churn)| churn.cgroup_id));
        }
        _ => {}
    }
    let (mut theirs, mut elsewhere) = (0.0, 0.0);
    for c in subjects.cpu_added() {
        if own.contains(&c.id) {
            theirs += c.added;
        } else {
            elsewhere += c.added;
        }
    }
    elsewhere <= theirs
}

/// Every anomaly kind the analyzer can name (so metrics can show zeros).
pub fn kinds() -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = FEATURES.iter().map(|f| f.1).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

/// An operator's verdict on an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    FalsePositive,
    Confirmed,
}

impl Verdict {
    pub const NAMES: [&'static str; 2] = ["false_positive", "confirmed"];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::FalsePositive => "false_positive",
            Verdict::Confirmed => "confirmed",
        }
    }
}

/// Verdicts received for one anomaly kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedbackCounts {
    pub false_positive: u64,
    pub confirmed: u64,
}

/// What a verdict changed.
#[derive(Debug, Clone, Serialize)]
pub struct FeedbackOutcome {
    pub id: u64,
    pub kind: &'static str,
    pub verdict: Verdict,
    pub scale_before: f64,
    pub scale_after: f64,
    pub reason: String,
}

#[derive(Debug, PartialEq)]
pub enum FeedbackError {
    UnknownAnomaly(u64),
    AlreadyJudged(u64),
}

/// Bounds and steps of the per-kind threshold scale (the bounds are also
/// the range a stored scale must lie in: knowledge.rs).
pub const SCALE_MIN: f64 = 0.5;
pub const SCALE_MAX: f64 = 4.0;
const SCALE_WIDEN: f64 = 1.25;
const SCALE_TIGHTEN: f64 = 0.95;

#[derive(Debug)]
pub struct Analyzer {
    pub baselines: BTreeMap<String, Baseline>,
    pub k: f64,
    pub warmup: u64,
    pub quiet_cycles: u32,
    pub active: Vec<Anomaly>,
    pub closed: Vec<Anomaly>,
    /// Standardised score per feature, last cycle.
    pub scores: BTreeMap<&'static str, f64>,
    /// Each feature's floor in the last cycle (`floor_in`).
    floors: BTreeMap<&'static str, f64>,
    /// Learned from verdicts, per anomaly kind: the scale on `k`.
    pub threshold_scale: BTreeMap<String, f64>,
    pub feedback: BTreeMap<String, FeedbackCounts>,
    /// Anomalies that already have a verdict (one each).
    judged: BTreeSet<u64>,
    next_id: u64,
}

impl Analyzer {
    pub fn new(k: f64, warmup: u64, quiet_cycles: u32) -> Self {
        Self {
            baselines: BTreeMap::new(),
            k,
            warmup,
            quiet_cycles,
            active: Vec::new(),
            closed: Vec::new(),
            scores: BTreeMap::new(),
            floors: BTreeMap::new(),
            threshold_scale: BTreeMap::new(),
            feedback: BTreeMap::new(),
            judged: BTreeSet::new(),
            next_id: 1,
        }
    }

    /// The learned scale on `k` for an anomaly kind (1 until feedback).
    pub fn scale(&self, kind: &str) -> f64 {
        self.threshold_scale.get(kind).copied().unwrap_or(1.0)
    }

    /// Applies an operator's verdict on anomaly `id` (active or recent).
    pub fn judge(&mut self, id: u64, verdict: Verdict) -> Result<FeedbackOutcome, FeedbackError> {
        let kind = self
            .active
            .iter()
            .chain(&self.closed)
            .find(|a| a.id == id)
            .map(|a| a.kind)
            .ok_or(FeedbackError::UnknownAnomaly(id))?;
        if !self.judged.insert(id) {
            return Err(FeedbackError::AlreadyJudged(id));
        }
        let before = self.scale(kind);
        let counts = self.feedback.entry(kind.to_owned()).or_default();
        let (after, reason) = match verdict {
            Verdict::FalsePositive => {
                counts.false_positive += 1;
                (
                    (before * SCALE_WIDEN).min(SCALE_MAX),
                    format!(
                        "anomaly {id} ({kind}) judged a false positive: {kind} needs a larger deviation to fire"
                    ),
                )
            }
            Verdict::Confirmed => {
                counts.confirmed += 1;
                (
                    (before * SCALE_TIGHTEN).max(SCALE_MIN),
                    format!(
                        "anomaly {id} ({kind}) confirmed: {kind} fires on a slightly smaller deviation"
                    ),
                )
            }
        };
        self.threshold_scale.insert(kind.to_owned(), after);
        Ok(FeedbackOutcome {
            id,
            kind,
            verdict,
            scale_before: before,
            scale_after: after,
            reason,
        })
    }

    /// The deviation used for scoring: never below a quarter of the mean,
    /// nor a hundredth of the feature's floor, so a flat baseline is not a
    /// hair trigger: with k = 6, a steady rate must reach 2.5 times its
    /// baseline to alarm (a cron job's burst of processes doubling the
    /// syscall rate for a second is not a storm; measured in the eval's
    /// 10-minute normal run).
    fn deviation(b: &Baseline, floor: f64) -> f64 {
        b.var
            .sqrt()
            .max(RELATIVE_DEVIATION * b.mean.abs())
            .max(floor / 100.0)
    }

    /// One cycle. Returns the anomalies opened in it.
    pub fn observe(&mut self, features: &Features, subjects: &Subjects, now: f64) -> Vec<Anomaly> {
        let mut firing: BTreeMap<&'static str, Vec<Evidence>> = BTreeMap::new();
        self.scores.clear();
        for &(feature, kind, floor) in FEATURES {
            let Some(&x) = features.get(feature) else {
                let idle = IDLE_WHEN_ABSENT
                    .iter()
                    .any(|&(f, ran)| f == feature && features.contains_key(ran));
                if idle {
                    let b = self.baselines.entry(feature.to_owned()).or_default();
                    b.samples = b.samples.saturating_add(1);
                }
                continue;
            };
            let floor_now = floor_in(feature, floor, features);
            self.floors.insert(feature, floor_now);
            let b = self
                .baselines
                .entry(feature.to_owned())
                .or_insert(Baseline {
                    mean: x,
                    var: 0.0,
                    samples: 0,
                    cusum: 0.0,
                });
            let dev = Self::deviation(b, floor);
            let z = (x - b.mean) / dev;
            self.scores.insert(feature, z);
            let warm = b.samples >= self.warmup;
            let scale = self.threshold_scale.get(kind).copied().unwrap_or(1.0);
            b.cusum = (b.cusum + z - CUSUM_SLACK).max(0.0);
            let spike = warm && x >= floor_now && z >= self.k * scale;
            let drift = warm && x >= floor_now && b.cusum >= CUSUM_ALARM * scale;
            if spike || drift {
                firing.entry(kind).or_default().push(Evidence {
                    feature,
                    baseline: b.mean,
                    observed: x,
                    score: z,
                });
                if drift {
                    b.cusum = 0.0;
                }
                // An incident must not become the new normal.
                continue;
            }
            // Below its floor, an outlier teaches the baseline no more
            // than a value on the threshold would (a robust, clipped
            // update): a new level is still learned, step by step, but one
            // cycle cannot widen the deviation enough to hide the
            // incident it begins. (A queue's first cycle, its RTT held
            // under the floor by two retransmits, took the deviation from
            // 0.3 to 3.4 ms, and the latency that followed scored 2-4.)
            let limit = if warm {
                self.k * scale * dev
            } else {
                f64::INFINITY
            };
            let delta = (x - b.mean).clamp(-limit, limit);
            b.mean += ALPHA * delta;
            b.var = (1.0 - ALPHA) * (b.var + ALPHA * delta * delta);
            b.samples += 1;
        }

        // The kinds whose own features fired, before symptoms join causes.
        let fired_own: BTreeSet<&'static str> = firing.keys().copied().collect();
        // Symptoms join the evidence of a cause firing in the same cycle,
        // most specific cause first.
        for &(cause, symptoms) in EXPLAINS {
            if !firing.contains_key(cause) {
                continue;
            }
            for symptom in symptoms {
                if !explains(cause, symptom, subjects) {
                    continue;
                }
                if let Some(evidence) = firing.remove(symptom) {
                    firing.entry(cause).or_default().extend(evidence);
                }
            }
        }
        // ... or of a cause in progress: one whose own features fired last
        // cycle (a symptom may lag its cause by a cycle). A cause that has
        // gone quiet explains nothing new: CPU saturation that outlasts a
        // burst of failing calls at its start (stress-ng's workers starting
        // up) is an incident of its own, not the burst's.
        let active_kinds: Vec<&'static str> = self
            .active
            .iter()
            .filter(|a| a.own_quiet == 0)
            .map(|a| a.kind)
            .collect();
        let symptoms: Vec<&'static str> = firing.keys().copied().collect();
        for symptom in symptoms {
            if let Some(cause) = explained_by(symptom, active_kinds.iter().copied(), subjects) {
                let evidence = firing.remove(symptom).unwrap_or_default();
                firing.entry(cause).or_default().extend(evidence);
            }
        }

        for anomaly in &mut self.active {
            anomaly.age = anomaly.age.saturating_add(1);
        }
        let refined = self.refine(&firing, subjects);
        let mut opened = Vec::new();
        for anomaly in &mut self.active {
            // Named later: per-process counting starts when a syscall
            // anomaly opens, so the process shows up a cycle after.
            if anomaly.subject.is_none() {
                anomaly.subject = match anomaly.kind {
                    "syscall_storm" => super::monitor::describe_syscall_process(subjects, false),
                    "syscall_error_spike" => {
                        super::monitor::describe_syscall_process(subjects, true)
                    }
                    _ => None,
                };
            }
            // The culprits of the cycle whose top culprit weighed most
            // while the anomaly is open: an incident builds up, its first
            // cycle may see only its edge (or, on a shared machine,
            // someone else's), and per-process events can arrive a cycle
            // late on a loaded machine.
            // Measures compare only among themselves.
            let moved = moved_most_first(firing.get(anomaly.kind).unwrap_or(&anomaly.evidence));
            let mut now = super::monitor::culprits(anomaly.kind, &moved, subjects);
            // A process that exited since keeps the name it had.
            for c in &mut now {
                if c.comm.as_deref() == Some("exited")
                    && let Some(old) = anomaly.culprits.iter().find(|o| o.pid == c.pid)
                {
                    c.comm.clone_from(&old.comm);
                }
            }
            let better = match (now.first(), anomaly.culprits.first()) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(n), Some(c)) if n.measure == c.measure => n.amount > c.amount,
                // Another measure: a generic fallback (a peer's packets)
                // gives way to a kind's own measure; between two of a
                // kind's own (retransmits, drops), the one whose feature
                // moved more this cycle names the culprits, so a blip
                // elsewhere on the node does not take over.
                (Some(n), Some(c)) => {
                    let moved = |measure: &str| {
                        firing
                            .get(anomaly.kind)
                            .into_iter()
                            .flatten()
                            .filter(|e| e.feature == measure)
                            .map(|e| e.score)
                            .fold(0.0, f64::max)
                    };
                    let (rn, rc) = (
                        super::monitor::measure_rank(n.measure),
                        super::monitor::measure_rank(c.measure),
                    );
                    rn > rc && (rc == 0 || moved(n.measure) > moved(c.measure))
                }
            };
            if better {
                anomaly.culprits = now;
                if let Some(note) = super::monitor::unattributed_note(anomaly.kind) {
                    anomaly.notes.retain(|n| n != note);
                }
                if anomaly.subject.is_none() || anomaly.subject_from_culprit {
                    anomaly.subject = anomaly.culprits.first().map(Culprit::describe);
                    anomaly.subject_from_culprit = true;
                }
            } else if complete_drop_peers(&mut anomaly.culprits, &now)
                && anomaly.subject_from_culprit
            {
                anomaly.subject = anomaly.culprits.first().map(Culprit::describe);
            }
            anomaly.set_pod(subjects);
            if let Some(evidence) = firing.remove(anomaly.kind) {
                anomaly.quiet = 0;
                anomaly.own_quiet = if fired_own.contains(anomaly.kind) {
                    0
                } else {
                    anomaly.own_quiet.saturating_add(1)
                };
                anomaly.score = evidence
                    .iter()
                    .map(|e| e.score)
                    .fold(anomaly.score, f64::max);
                let scale = self.threshold_scale.get(anomaly.kind).copied();
                anomaly.severity = severity(anomaly.score, self.k * scale.unwrap_or(1.0));
                anomaly.evidence = evidence;
            } else {
                anomaly.quiet += 1;
                anomaly.own_quiet = anomaly.own_quiet.saturating_add(1);
            }
        }
        for (kind, evidence) in firing {
            let score = evidence.iter().map(|e| e.score).fold(0.0, f64::max);
            let (subject, culprits, subject_from_culprit) = named(kind, &evidence, subjects);
            let notes = unattributed_notes(kind, subject.as_deref());
            let mut anomaly = Anomaly {
                id: self.next_id,
                kind,
                severity: severity(score, self.k * self.scale(kind)),
                score,
                start: now,
                end: None,
                evidence,
                subject,
                culprits,
                notes,
                pod: None,
                namespace: None,
                container: None,
                container_id: None,
                quiet: 0,
                own_quiet: 0,
                age: 0,
                subject_from_culprit,
            };
            anomaly.set_pod(subjects);
            self.next_id += 1;
            opened.push(anomaly.clone());
            self.active.push(anomaly);
        }
        opened.extend(
            self.active
                .iter()
                .filter(|a| refined.contains(&a.id))
                .cloned(),
        );
        let quiet_cycles = self.quiet_cycles;
        let (done, still): (Vec<Anomaly>, Vec<Anomaly>) =
            self.active.drain(..).partition(|a| a.quiet >= quiet_cycles);
        self.active = still;
        for mut anomaly in done {
            anomaly.end = Some(now);
            self.closed.push(anomaly);
        }
        if self.closed.len() > 256 {
            let excess = self.closed.len() - 256;
            self.closed.drain(..excess);
        }
        opened
    }

    /// Renames for its cause an anomaly opened as a symptom of it at most
    /// `REFINE_CYCLES` ago, when that cause fires now: one incident, one
    /// anomaly, named for what happened (and kept from its first cycle, so
    /// the refinement costs no time to detect). Its culprits and subject
    /// are the cause's; its first name stays in its notes. Returns the ids
    /// renamed; the cause's evidence joins them in this cycle's update.
    fn refine(
        &mut self,
        firing: &BTreeMap<&'static str, Vec<Evidence>>,
        subjects: &Subjects,
    ) -> Vec<u64> {
        let mut refined = Vec::new();
        for (&cause, evidence) in firing {
            if self.active.iter().any(|a| a.kind == cause) {
                continue;
            }
            let Some(anomaly) = self.active.iter_mut().find(|a| {
                a.age <= REFINE_CYCLES
                    && explains(cause, a.kind, subjects)
                    && !refined.contains(&a.id)
            }) else {
                continue;
            };
            let first = anomaly.kind;
            anomaly.kind = cause;
            let (subject, culprits, from_culprit) = named(cause, evidence, subjects);
            anomaly.subject = subject;
            anomaly.culprits = culprits;
            anomaly.subject_from_culprit = from_culprit;
            // Named again for the cause's subject (this cycle's update).
            anomaly.pod = None;
            anomaly.namespace = None;
            anomaly.container = None;
            anomaly.container_id = None;
            if let Some(note) = super::monitor::unattributed_note(first) {
                anomaly.notes.retain(|n| n != note);
            }
            let unattributed = unattributed_notes(cause, anomaly.subject.as_deref());
            anomaly.notes.extend(unattributed);
            anomaly.notes.push(format!(
                "opened as {first}; named {cause} when its cause showed {} cycle(s) later",
                anomaly.age
            ));
            refined.push(anomaly.id);
        }
        refined
    }

    /// A feature's floor in the last cycle (the table's before any).
    fn floor_now(&self, feature: &str, floor: f64) -> f64 {
        self.floors.get(feature).copied().unwrap_or(floor)
    }

    /// The deviation threshold per feature, in the feature's own units.
    pub fn thresholds(&self) -> Vec<(&'static str, f64)> {
        FEATURES
            .iter()
            .filter_map(|&(feature, kind, floor)| {
                let b = self.baselines.get(feature)?;
                let k = self.k * self.scale(kind);
                let floor_now = self.floor_now(feature, floor);
                Some((
                    feature,
                    (b.mean + k * Self::deviation(b, floor)).max(floor_now),
                ))
            })
            .collect()
    }

    /// The threshold per feature in the unit of its score (deviations from
    /// the baseline): a score at or above it is a spike. The larger of
    /// `k` (scaled by the verdicts) and the floor's distance from the
    /// baseline, so the one number covers both conditions of a spike.
    pub fn score_thresholds(&self) -> Vec<(&'static str, f64)> {
        FEATURES
            .iter()
            .filter_map(|&(feature, kind, floor)| {
                let b = self.baselines.get(feature)?;
                let k = self.k * self.scale(kind);
                let floor_now = self.floor_now(feature, floor);
                Some((
                    feature,
                    k.max((floor_now - b.mean) / Self::deviation(b, floor)),
                ))
            })
            .collect()
    }
}

fn severity(score: f64, k: f64) -> Severity {
    if score >= 2.0 * k {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(a: &mut Analyzer, syscalls: f64, t: f64) -> Vec<Anomaly> {
        let mut f = Features::new();
        f.insert("syscalls_per_second", syscalls);
        a.observe(&f, &Subjects::default(), t)
    }

    #[test]
    fn learns_a_noisy_baseline_without_alarms_then_flags_a_storm() {
        let mut a = Analyzer::new(6.0, 20, 3);
        let mut t = 0.0;
        for i in 0..200 {
            let noisy = 50_000.0 + 5_000.0 * ((i * 7919 % 13) as f64 / 13.0 - 0.5);
            assert!(cycle(&mut a, noisy, t).is_empty(), "false alarm at {i}");
            t += 1.0;
        }
        let opened = cycle(&mut a, 500_000.0, t);
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].kind, "syscall_storm");
        assert_eq!(a.active.len(), 1);
        // The storm did not move the baseline.
        assert!(a.baselines["syscalls_per_second"].mean < 60_000.0);
        for _ in 0..3 {
            t += 1.0;
            cycle(&mut a, 50_000.0, t);
        }
        assert!(a.active.is_empty());
        assert_eq!(a.closed.len(), 1);
        assert!(a.closed[0].end.is_some());
    }

    #[test]
    fn false_positives_widen_the_threshold_and_confirmations_tighten_it() {
        let mut a = Analyzer::new(6.0, 20, 1);
        let mut t = 0.0;
        for i in 0..100 {
            let noisy = 50_000.0 + 5_000.0 * ((i * 7919 % 13) as f64 / 13.0 - 0.5);
            cycle(&mut a, noisy, t);
            t += 1.0;
        }
        let threshold = |a: &Analyzer| a.thresholds()[0].1;
        let before = threshold(&a);
        // The exported threshold is in the score's unit: the score of a
        // value at the threshold is the score threshold.
        let score_threshold = |a: &Analyzer| a.score_thresholds()[0].1;
        let b = &a.baselines["syscalls_per_second"];
        let at = (before - b.mean) / Analyzer::deviation(b, 20_000.0);
        assert!((at - score_threshold(&a)).abs() < 1e-9, "{at}");
        assert_eq!(score_threshold(&a), 6.0);
        let before_score = score_threshold(&a);
        // Just above the threshold: fires.
        let opened = cycle(&mut a, before * 1.02, t);
        assert_eq!(opened.len(), 1);
        let id = opened[0].id;
        let outcome = a.judge(id, Verdict::FalsePositive).unwrap();
        assert_eq!((outcome.scale_before, outcome.scale_after), (1.0, 1.25));
        assert_eq!(
            a.judge(id, Verdict::Confirmed).unwrap_err(),
            FeedbackError::AlreadyJudged(id)
        );
        assert_eq!(
            a.judge(999, Verdict::Confirmed).unwrap_err(),
            FeedbackError::UnknownAnomaly(999)
        );
        assert_eq!(a.feedback["syscall_storm"].false_positive, 1);
        for _ in 0..2 {
            t += 1.0;
            cycle(&mut a, 50_000.0, t);
        }
        assert!(a.active.is_empty());
        // The same deviation no longer fires; the threshold moved up.
        assert!(threshold(&a) > before);
        assert_eq!(score_threshold(&a), 7.5);
        assert!(score_threshold(&a) > before_score);
        t += 1.0;
        assert!(cycle(&mut a, before * 1.02, t).is_empty());
        // Widening is bounded.
        for _ in 0..20 {
            a.threshold_scale
                .insert("syscall_storm".into(), a.scale("syscall_storm") * 1.25);
        }
        t += 1.0;
        let big = cycle(&mut a, 5e12, t);
        let outcome = a.judge(big[0].id, Verdict::FalsePositive).unwrap();
        assert_eq!(outcome.scale_after, SCALE_MAX);
        assert_eq!(
            a.judge(big[0].id, Verdict::Confirmed).unwrap_err(),
            FeedbackError::AlreadyJudged(big[0].id)
        );
    }

    #[test]
    fn quiet_node_does_not_alarm_on_small_absolute_changes() {
        let mut a = Analyzer::new(6.0, 10, 3);
        for i in 0..50 {
            cycle(&mut a, 100.0, f64::from(i));
        }
        // 30x the baseline, but far below the floor for a storm.
        assert!(cycle(&mut a, 3_000.0, 50.0).is_empty());
    }

    #[test]
    fn a_slow_disk_is_named_by_its_device_and_a_busy_one_under_the_floor_is_not() {
        use crate::mapek::monitor::BlockDelta;
        let disk = |mean: f64| {
            let mut f = Features::new();
            f.insert("block_io_mean_latency_seconds", mean);
            f
        };
        let mut a = Analyzer::new(6.0, 10, 3);
        for i in 0..30 {
            let mean = 0.0008 + 0.0002 * f64::from(i % 3);
            assert!(
                a.observe(&disk(mean), &Subjects::default(), f64::from(i))
                    .is_empty()
            );
        }
        // 15 times slower, still under 20 ms: a busy disk, not a broken one.
        assert!(
            a.observe(&disk(0.015), &Subjects::default(), 30.0)
                .is_empty()
        );
        let subjects = Subjects {
            block_devices: vec![
                BlockDelta {
                    device: "loop7".into(),
                    requests: 20,
                    sum_ns: 1_200_000_000,
                },
                BlockDelta {
                    device: "vda".into(),
                    requests: 100,
                    sum_ns: 100_000_000,
                },
            ],
            seconds: 1.0,
            ..Default::default()
        };
        let opened = a.observe(&disk(0.06), &subjects, 31.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "io_latency_regression");
        let subject = opened[0].subject.as_deref().unwrap_or_default();
        assert!(
            subject.starts_with("device loop7: requests took 60.0 ms"),
            "{subject}"
        );
        assert_eq!(opened[0].culprits[0].device.as_deref(), Some("loop7"));
    }

    #[test]
    fn a_hung_disk_is_an_io_stall_named_by_its_device_and_its_tail_joins_it() {
        use crate::{diskstats::Stall, mapek::monitor::BlockDelta};
        let disk = |stalled: f64, mean: Option<f64>| {
            let mut f = Features::new();
            f.insert("block_io_stalled_seconds", stalled);
            if let Some(mean) = mean {
                f.insert("block_io_mean_latency_seconds", mean);
            }
            f
        };
        let mut a = Analyzer::new(6.0, 10, 3);
        for i in 0..30 {
            // A busy disk: requests in flight, completing.
            let quiet = a.observe(&disk(0.0, Some(0.001)), &Subjects::default(), f64::from(i));
            assert!(quiet.is_empty(), "{quiet:?}");
        }
        // Under a second without a completion: a slow request, not a hang.
        let slow = a.observe(&disk(0.8, Some(0.001)), &Subjects::default(), 30.0);
        assert!(slow.is_empty(), "{slow:?}");
        let stalled = |seconds: f64| Subjects {
            block_stalls: vec![
                Stall {
                    device: "vda".into(),
                    in_flight: 1,
                    seconds: 0.0,
                },
                Stall {
                    device: "loop3".into(),
                    in_flight: 3,
                    seconds,
                },
            ],
            seconds: 1.0,
            ..Default::default()
        };
        // No completion on the stuck disk: no mean from it.
        let opened = a.observe(&disk(2.0, Some(0.001)), &stalled(2.0), 31.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "io_stall");
        let subject = opened[0].subject.as_deref().unwrap_or_default();
        assert_eq!(
            subject,
            "device loop3: requests in flight, none completed for 2.0 s (100% of the \
             requests stuck in flight)"
        );
        assert_eq!(
            opened[0].culprits.len(),
            1,
            "a completing disk is no culprit"
        );
        assert!(opened[0].culprits[0].proven);
        // The stall ends: its requests complete after seconds each, which
        // joins the stall's anomaly instead of opening another.
        let released = Subjects {
            block_devices: vec![BlockDelta {
                device: "loop3".into(),
                requests: 3,
                sum_ns: 9_000_000_000,
            }],
            seconds: 1.0,
            ..Default::default()
        };
        let tail = a.observe(&disk(0.0, Some(3.0)), &released, 32.0);
        assert!(tail.is_empty(), "{tail:?}");
        assert_eq!(a.active.len(), 1);
        assert_eq!(a.active[0].kind, "io_stall");
    }

    #[test]
    fn a_delay_with_nothing_lost_is_latency_and_one_that_loss_explains_is_not() {
        let normal = |i: u32| {
            let mut f = Features::new();
            f.insert("tcp_rtt_mean_seconds", 0.0011 + 0.0001 * f64::from(i % 3));
            f.insert("tcp_retransmits_per_second", 0.0);
            f.insert("packet_drops_per_second", 0.0);
            f
        };
        let warm = || {
            let mut a = Analyzer::new(6.0, 10, 3);
            for i in 0..30 {
                assert!(
                    a.observe(&normal(i), &Subjects::default(), f64::from(i))
                        .is_empty()
                );
            }
            a
        };
        // A queue: 1 ms to 8 ms, nothing retransmitted or dropped.
        let mut a = warm();
        let mut queue = normal(30);
        queue.insert("tcp_rtt_mean_seconds", 0.008);
        let opened = a.observe(&queue, &Subjects::default(), 30.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "latency_regression");
        let rtt = |a: &Analyzer| {
            a.thresholds()
                .into_iter()
                .find(|t| t.0 == "tcp_rtt_mean_seconds")
                .map(|t| t.1)
        };
        assert!(rtt(&a).is_some_and(|t| t < 0.02), "{:?}", rtt(&a));
        // Random loss lifts the RTT as much: the loss is what happened.
        let mut a = warm();
        let mut loss = normal(30);
        loss.insert("tcp_rtt_mean_seconds", 0.008);
        loss.insert("tcp_retransmits_per_second", 9.0);
        loss.insert("packet_drops_per_second", 26.0);
        let opened = a.observe(&loss, &Subjects::default(), 30.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "packet_loss");
        assert_eq!(rtt(&a), Some(0.02));
        // The queue goes: its last packets are dropped and retransmitted
        // while the delay is still open. Part of it, not a new anomaly.
        let mut a = warm();
        for (i, rtt) in [0.0075, 0.0115, 0.0137].into_iter().enumerate() {
            let mut q = normal(30);
            q.insert("tcp_rtt_mean_seconds", rtt);
            a.observe(&q, &Subjects::default(), 30.0 + i as f64);
        }
        let mut gone = normal(33);
        gone.insert("tcp_rtt_mean_seconds", 0.0023);
        gone.insert("tcp_retransmits_per_second", 9.0);
        gone.insert("packet_drops_per_second", 9.0);
        let opened = a.observe(&gone, &Subjects::default(), 33.0);
        assert!(opened.is_empty(), "{opened:?}");
        // A queue whose first cycle lost some: that cycle's RTT, under the
        // floor loss sets, is learned only up to the threshold, so the
        // delay that follows still scores as a delay, cycle after cycle,
        // and names the incident.
        let mut a = warm();
        let mut first = normal(30);
        first.insert("tcp_rtt_mean_seconds", 0.0165);
        first.insert("tcp_retransmits_per_second", 9.0);
        let opened = a.observe(&first, &Subjects::default(), 30.0);
        assert_eq!(opened[0].kind, "packet_loss", "{opened:?}");
        for (i, rtt) in [0.0075, 0.0115, 0.0137, 0.0152].into_iter().enumerate() {
            let mut q = normal(31);
            q.insert("tcp_rtt_mean_seconds", rtt);
            a.observe(&q, &Subjects::default(), 31.0 + i as f64);
            assert!(a.scores["tcp_rtt_mean_seconds"] >= 6.0, "{:?}", a.scores);
            assert_eq!(a.active.len(), 1);
            assert_eq!(a.active[0].kind, "latency_regression");
        }
        // A queue deep enough to drop: past 20 ms, latency names it.
        let mut a = warm();
        let mut bloat = loss.clone();
        bloat.insert("tcp_rtt_mean_seconds", 0.06);
        let opened = a.observe(&bloat, &Subjects::default(), 30.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "latency_regression");
    }

    #[test]
    fn an_incident_is_named_for_its_cause_and_its_symptoms_join_it() {
        let mut a = Analyzer::new(6.0, 10, 3);
        let normal = |i: u32| {
            let mut f = Features::new();
            let wobble = f64::from(i % 3);
            f.insert("syscalls_per_second", 30_000.0 + 1_000.0 * wobble);
            f.insert("process_exits_per_second", 5.0 + wobble);
            f.insert("runqueue_mean_wait_seconds", 0.0001);
            f.insert("tcp_retransmits_per_second", 0.0);
            f.insert("tcp_rtt_mean_seconds", 0.0001);
            f
        };
        for i in 0..30 {
            assert!(
                a.observe(&normal(i), &Subjects::default(), f64::from(i))
                    .is_empty()
            );
        }
        // A fork storm: processes, syscalls and the run queue all move.
        let mut storm = normal(30);
        storm.insert("syscalls_per_second", 400_000.0);
        storm.insert("process_exits_per_second", 5_000.0);
        storm.insert("runqueue_mean_wait_seconds", 0.02);
        let opened = a.observe(&storm, &Subjects::default(), 30.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "fork_storm");
        assert_eq!(opened[0].evidence.len(), 3);
        // Its symptom alone next cycle joins the active cause.
        let mut tail = normal(31);
        tail.insert("syscalls_per_second", 400_000.0);
        assert!(a.observe(&tail, &Subjects::default(), 31.0).is_empty());
        assert_eq!(a.active.len(), 1);
        for i in 32..40 {
            a.observe(&normal(i), &Subjects::default(), f64::from(i));
        }
        assert!(a.active.is_empty());
        // A queue that delays and drops: latency, not loss.
        let mut bloat = normal(40);
        bloat.insert("tcp_rtt_mean_seconds", 0.2);
        bloat.insert("tcp_retransmits_per_second", 300.0);
        let opened = a.observe(&bloat, &Subjects::default(), 40.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "latency_regression");
    }

    /// CPU hogs starting up: their first cycle has a burst of failing
    /// calls (which explains the run queue's move in that cycle), and the
    /// saturation then goes on without it. The burst explains the next
    /// cycle still (a symptom may lag), but once it has been quiet for a
    /// whole cycle, the saturation is an anomaly of its own.
    #[test]
    fn a_symptom_that_outlasts_its_cause_is_named_for_itself() {
        let mut a = Analyzer::new(6.0, 10, 3);
        let normal = |i: u32| {
            let mut f = Features::new();
            let wobble = f64::from(i % 3);
            f.insert("syscalls_per_second", 3_000.0 + 100.0 * wobble);
            f.insert("syscall_error_share", 0.04 + 0.005 * wobble);
            f.insert("runqueue_mean_wait_seconds", 0.0002 + 0.00002 * wobble);
            f.insert("runqueue_waiting_per_cpu", 0.05 + 0.01 * wobble);
            f
        };
        for i in 0..30 {
            assert!(
                a.observe(&normal(i), &Subjects::default(), f64::from(i))
                    .is_empty()
            );
        }
        let mut start = normal(30);
        start.insert("syscall_error_share", 0.26);
        start.insert("runqueue_mean_wait_seconds", 0.0017);
        let opened = a.observe(&start, &Subjects::default(), 30.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "syscall_error_spike");
        assert_eq!(opened[0].evidence.len(), 2, "{opened:?}");
        let saturated = |i: u32| {
            let mut f = normal(i);
            f.insert("runqueue_mean_wait_seconds", 0.004);
            f.insert("runqueue_waiting_per_cpu", 2.0);
            f
        };
        // The cycle after the burst: a symptom that lags its cause joins it.
        assert!(
            a.observe(&saturated(31), &Subjects::default(), 31.0)
                .is_empty()
        );
        // The burst quiet a whole cycle: the saturation is its own.
        let opened = a.observe(&saturated(32), &Subjects::default(), 32.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "cpu_saturation");
        let kinds: Vec<&str> = a.active.iter().map(|x| x.kind).collect();
        assert_eq!(kinds, ["syscall_error_spike", "cpu_saturation"]);
        // The burst's anomaly closes on its own quiet cycles; the
        // saturation's stays while the hogs run.
        for i in 33..36 {
            a.observe(&saturated(i), &Subjects::default(), f64::from(i));
        }
        let kinds: Vec<&str> = a.active.iter().map(|x| x.kind).collect();
        assert_eq!(kinds, ["cpu_saturation"]);
    }

    #[test]
    fn a_symptom_seen_first_is_renamed_for_its_cause_within_two_cycles() {
        let mut a = Analyzer::new(6.0, 10, 3);
        let normal = |i: u32| {
            let mut f = Features::new();
            f.insert("tcp_retransmits_per_second", f64::from(i % 2));
            f.insert("tcp_rtt_mean_seconds", 0.0001);
            f.insert("syscalls_per_second", 30_000.0 + 1_000.0 * f64::from(i % 3));
            f.insert("process_exits_per_second", 5.0 + f64::from(i % 3));
            f
        };
        for i in 0..30 {
            a.observe(&normal(i), &Subjects::default(), f64::from(i));
        }
        // A queue fills: it drops (retransmits) a cycle before the RTT
        // mean shows its delay.
        let mut loss = normal(30);
        loss.insert("tcp_retransmits_per_second", 300.0);
        let first = a.observe(&loss, &Subjects::default(), 30.0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, "packet_loss");
        loss.insert("tcp_rtt_mean_seconds", 0.2);
        let opened = a.observe(&loss, &Subjects::default(), 31.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        let renamed = &opened[0];
        assert_eq!(
            (renamed.id, renamed.kind),
            (first[0].id, "latency_regression")
        );
        assert_eq!(renamed.start, 30.0, "it keeps its first cycle");
        assert!(
            renamed
                .notes
                .iter()
                .any(|n| n.contains("opened as packet_loss"))
        );
        assert_eq!(a.active.len(), 1);
        for i in 32..40 {
            a.observe(&normal(i), &Subjects::default(), f64::from(i));
        }
        assert!(a.active.is_empty());
        // Three cycles on, a symptom is its own anomaly: the cause opens
        // beside it.
        let storm = |i: u32| {
            let mut f = normal(i);
            f.insert("syscalls_per_second", 400_000.0);
            f
        };
        a.observe(&storm(40), &Subjects::default(), 40.0);
        for i in 41..43 {
            a.observe(&storm(i), &Subjects::default(), f64::from(i));
        }
        let mut forks = storm(43);
        forks.insert("process_exits_per_second", 5_000.0);
        let opened = a.observe(&forks, &Subjects::default(), 43.0);
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].kind, "fork_storm");
        let mut kinds: Vec<&str> = a.active.iter().map(|a| a.kind).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["fork_storm", "syscall_storm"]);
    }

    /// CPU saturation beside a flood: the flood's own when the CPU went to
    /// the root cgroup (softirq, kernel threads), an anomaly of its own
    /// naming the cgroup when hogs there took it; beside a fork storm, the
    /// storm's when its parent's cgroup took it.
    #[test]
    fn cpu_saturation_is_a_causes_symptom_only_where_the_cause_runs() {
        use super::super::monitor::CgroupCpu;
        let normal = |i: u32| {
            let wobble = f64::from(i % 3);
            Features::from([
                ("udp_in_packets_per_second", 100.0 + 10.0 * wobble),
                ("process_exits_per_second", 5.0 + wobble),
                ("runqueue_mean_wait_seconds", 0.0001),
                ("runqueue_waiting_per_cpu", 0.01),
            ])
        };
        let mut both = normal(30);
        both.insert("udp_in_packets_per_second", 20_000.0);
        both.insert("runqueue_mean_wait_seconds", 0.02);
        both.insert("runqueue_waiting_per_cpu", 1.5);
        let took = |cgroups: &[(u64, f64)]| Subjects {
            cgroups: cgroups
                .iter()
                .map(|&(id, added)| CgroupCpu {
                    id,
                    waited: 0.5,
                    waits: 100.0,
                    ran: added,
                    added,
                })
                .collect(),
            ..Subjects::default()
        };
        let kinds = |opened: &[Anomaly]| {
            let mut k: Vec<&str> = opened.iter().map(|a| a.kind).collect();
            k.sort_unstable();
            k
        };
        let hogs = 4242;
        // The kernel's threads took the CPU: one incident, the flood.
        let mut a = warmed_up(normal);
        let opened = a.observe(&both, &took(&[(crate::cgroup::ROOT_ID, 0.8)]), 30.0);
        assert_eq!(kinds(&opened), ["udp_flood"]);
        // Hogs in a cgroup of their own took most of it: two incidents.
        let mut a = warmed_up(normal);
        let subjects = took(&[(crate::cgroup::ROOT_ID, 0.2), (hogs, 1.4)]);
        let opened = a.observe(&both, &subjects, 30.0);
        assert_eq!(kinds(&opened), ["cpu_saturation", "udp_flood"]);
        // Nor does the flood, once active, take the hogs' saturation later.
        let mut a = warmed_up(normal);
        let mut flood = normal(30);
        flood.insert("udp_in_packets_per_second", 20_000.0);
        assert_eq!(
            kinds(&a.observe(&flood, &Subjects::default(), 30.0)),
            ["udp_flood"]
        );
        assert_eq!(
            kinds(&a.observe(&both, &subjects, 31.0)),
            ["cpu_saturation"]
        );
        // A fork storm whose parent's cgroup took the CPU keeps it.
        let mut a = warmed_up(normal);
        let mut storm = normal(30);
        storm.insert("process_exits_per_second", 5_000.0);
        storm.insert("runqueue_mean_wait_seconds", 0.02);
        storm.insert("runqueue_waiting_per_cpu", 1.5);
        let shell = 77;
        let mut subjects = took(&[(shell, 1.0), (crate::cgroup::ROOT_ID, 0.1)]);
        subjects.busiest_parent = Some((
            900,
            crate::events::Churn {
                events: 5_000,
                cgroup_id: shell,
            },
        ));
        assert_eq!(kinds(&a.observe(&storm, &subjects, 30.0)), ["fork_storm"]);
    }

    /// An analyzer past its warm-up on 30 cycles of `normal`, which
    /// opened nothing.
    fn warmed_up(normal: impl Fn(u32) -> Features) -> Analyzer {
        let mut a = Analyzer::new(6.0, 10, 3);
        for i in 0..30 {
            assert!(
                a.observe(&normal(i), &Subjects::default(), f64::from(i))
                    .is_empty()
            );
        }
        a
    }

    /// A disk idle all through the warm-up (the block signal ran, no
    /// device completed enough requests for a mean) and slow when it is
    /// first used: judged against the floor, not learned as its normal.
    /// A healthy first use is not an anomaly; with the block signal off
    /// (no stall feature either) no baseline is made.
    #[test]
    fn a_disk_idle_through_the_warm_up_is_judged_on_its_first_use() {
        let idle = |_| Features::from([("block_io_stalled_seconds", 0.0)]);
        let first_use = |mean: f64| {
            Features::from([
                ("block_io_stalled_seconds", 0.0),
                ("block_io_mean_latency_seconds", mean),
            ])
        };
        let mut a = warmed_up(idle);
        assert!(
            a.observe(&first_use(0.002), &Subjects::default(), 30.0)
                .is_empty()
        );
        let mut a = warmed_up(idle);
        let opened = a.observe(&first_use(0.062), &Subjects::default(), 30.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "io_latency_regression");

        let mut off = warmed_up(|_| Features::new());
        assert!(!off.baselines.contains_key("block_io_mean_latency_seconds"));
        assert!(
            off.observe(&first_use(0.062), &Subjects::default(), 30.0)
                .is_empty()
        );
    }

    #[test]
    fn a_flood_names_its_source_peers_with_their_shares_unproven() {
        use crate::signals::packets::InboundPeer;
        let normal = |i: u32| {
            let mut f = Features::new();
            f.insert("udp_in_packets_per_second", 100.0 + f64::from(i % 3));
            f.insert("inbound_packets_per_second", 1_000.0 + f64::from(i % 3));
            f
        };
        let mut a = warmed_up(normal);
        let attacker: std::net::IpAddr = "10.9.0.2".parse().unwrap();
        let bystander: std::net::IpAddr = "10.9.0.3".parse().unwrap();
        let row = |peer, protocol, packets| InboundPeer {
            peer,
            protocol,
            link_control: false,
            fragments: false,
            packets,
            bytes: packets * 100,
            new_flows: 1,
        };
        let subjects = Subjects {
            inbound: vec![row(attacker, 17, 45_000), row(bystander, 17, 5_000)],
            inbound_totals: [(17, (50_000, 5_000_000)), (6, (1_000, 60_000))].into(),
            seconds: 1.0,
            ..Default::default()
        };
        let mut flood = normal(30);
        flood.insert("udp_in_packets_per_second", 50_000.0);
        flood.insert("inbound_packets_per_second", 51_000.0);
        let opened = a.observe(&flood, &subjects, 30.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "udp_flood");
        let top = &opened[0].culprits[0];
        assert_eq!(top.kind, CulpritKind::Peer);
        assert_eq!(top.peer, Some(attacker));
        assert_eq!(top.protocol, Some("udp"));
        assert!((top.share - 0.9).abs() < 1e-9, "{top:?}");
        assert!(!top.proven, "a source address is never proven by traffic");
        assert_eq!(opened[0].culprits.len(), 2);
        let subject = opened[0].subject.as_deref().unwrap();
        assert!(subject.starts_with("peer 10.9.0.2 sent 90%"), "{subject}");
        // Not a blockable subject: enforcement parses only "peer ADDR".
        assert!(subject.contains("unproven"), "{subject}");
    }

    /// A flood of fragmented UDP moves the UDP feature and the fragments'
    /// together: it is one anomaly, named for the fragments, whose culprit
    /// is who sent them (not a peer whose whole datagrams only add to the
    /// UDP rate), with the datagrams' protocol.
    #[test]
    fn fragmented_udp_is_a_fragment_flood_of_its_sender() {
        use crate::signals::packets::InboundPeer;
        let normal = |i: u32| {
            let mut f = Features::new();
            f.insert("udp_in_packets_per_second", 100.0 + f64::from(i % 3));
            f.insert("ip_fragments_in_per_second", f64::from(i % 2));
            f.insert("inbound_packets_per_second", 1_000.0 + f64::from(i % 5));
            f
        };
        let mut a = warmed_up(normal);
        let sender: std::net::IpAddr = "10.9.0.2".parse().unwrap();
        let bystander: std::net::IpAddr = "10.9.0.3".parse().unwrap();
        let row = |peer, fragments, packets| InboundPeer {
            peer,
            protocol: 17,
            link_control: false,
            fragments,
            packets,
            bytes: packets * 1_000,
            new_flows: 0,
        };
        let subjects = Subjects {
            inbound: vec![row(bystander, false, 4_000), row(sender, true, 3_000)],
            inbound_totals: [(17, (7_000, 7_000_000))].into(),
            inbound_fragments: (3_000, 3_000_000),
            seconds: 1.0,
            ..Default::default()
        };
        let mut flood = normal(30);
        flood.insert("udp_in_packets_per_second", 7_000.0);
        flood.insert("ip_fragments_in_per_second", 3_000.0);
        flood.insert("inbound_packets_per_second", 8_000.0);
        let opened = a.observe(&flood, &subjects, 30.0);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].kind, "fragment_flood");
        let top = &opened[0].culprits[0];
        assert_eq!((top.peer, top.protocol), (Some(sender), Some("udp")));
        assert_eq!(top.share, 1.0);
        assert_eq!(opened[0].culprits.len(), 1, "{:?}", opened[0].culprits);
        let subject = opened[0].subject.as_deref().unwrap();
        assert!(
            subject.starts_with("peer 10.9.0.2 sent 100% of inbound udp IP fragments (3000/s"),
            "{subject}"
        );
    }
}
