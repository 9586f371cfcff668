//! The MAPE-K loop: Monitor (features from collector snapshots), Analyze
//! (online baselines, anomalies), Plan (zoom in / restore), Execute (apply
//! or dry-run), over Knowledge (baselines persisted across restarts), and
//! the same loop governs Sonde's own cost against a budget (govern). It
//! runs once per collector snapshot, on its own task, and shares what it
//! found with /metrics and /api/v1/anomalies.

pub mod analyze;
pub mod execute;
pub mod govern;
pub mod guard;
pub mod kernel_notes;
pub mod knowledge;
pub mod monitor;
pub mod plan;

use std::{
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use prometheus::proto::{MetricFamily, MetricType};
use serde_json::json;

use self::{
    analyze::Analyzer, execute::Executor, knowledge::Knowledge, monitor::Signals, plan::Planner,
};
use crate::{
    collectors::{CollectorHandle, Snapshot},
    config::{Config, overlay::SHED_STEPS},
    events::Events,
    family::Family,
    probes::Attachment,
    signals,
    time::{process_cpu_seconds, unix_seconds},
};

/// Cycles between two reads of enforce mode's protected set (for the
/// report; a block always reads it afresh).
const PROTECTED_EVERY: u64 = 10;
/// Cycles between two saves of the knowledge.
const SAVE_EVERY: u64 = 30;
/// Feature vectors kept for /api/v1/features (15 minutes at 1 s).
pub const FEATURE_HISTORY: usize = 900;

/// What the loop exposes to the rest of the agent.
pub struct Mapek {
    analyzer: Analyzer,
    planner: Planner,
    executor: Executor,
    knowledge: Option<Knowledge>,
    signals: Signals,
    cycles: u64,
    last_cycle: Duration,
    /// How old the kernel snapshot was when the last cycle began on it.
    snapshot_age: Duration,
    anomalies_total: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    save_failing: bool,
    /// The latest verdicts and what they changed.
    feedback_log: Vec<analyze::FeedbackOutcome>,
    governor: govern::Governor,
    /// The agent's CPU seconds at the last cycle, the HTTP server's
    /// excepted.
    cpu_seconds: Option<f64>,
    /// The HTTP server's CPU seconds at the last cycle.
    serving_seconds: f64,
    /// The latest cycles' (cycle, time, features), oldest first.
    history: std::collections::VecDeque<(u64, f64, monitor::Features)>,
    /// Each cgroup's usual CPU, to name who takes the CPUs (not kept in
    /// the state directory: after a restart the biggest consumers are
    /// named until it is learned again, ~20 cycles).
    cpu_usual: monitor::CpuUsual,
    /// Learned baselines came from the state directory (no warm-up).
    baselines_reloaded: bool,
    /// Enforce mode: the handshake record is attached (sources can be
    /// proven real).
    proof_attached: bool,
    /// Enforce mode: the protected set as last read, for the report.
    protected: Vec<guard::Protected>,
    /// Peers that scraped /metrics lately (filled by the HTTP layer).
    scrapers: guard::Scrapers,
    /// The kernel's SYN-cookie and reassembly counters as first read
    /// while an anomaly they speak to is open.
    syn_cookies: Option<kernel_notes::SynCookies>,
    reassembly: Option<kernel_notes::Reassembly>,
}

pub type SharedMapek = Arc<Mutex<Mapek>>;

impl Mapek {
    /// A loop for this configuration, watching the signals whose programs
    /// are attached.
    pub fn new(config: &Config, attached: &[Attachment]) -> Self {
        let m = &config.mapek;
        let knowledge = m
            .state_dir
            .as_ref()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| Knowledge::new(dir));
        let mut analyzer = Analyzer::new(m.sensitivity, m.warmup_cycles, m.quiet_cycles);
        let mut governor = govern::Governor::new(m.cpu_budget, m.lost_events_budget);
        governor.enabled = m.govern_cost;
        if let Some(k) = &knowledge {
            let learned = k.load();
            analyzer.baselines = learned.baselines;
            analyzer.threshold_scale = learned.threshold_scale;
            analyzer.feedback = learned.feedback;
            if !analyzer.baselines.is_empty() {
                tracing::info!(
                    features = analyzer.baselines.len(),
                    scaled_kinds = analyzer.threshold_scale.len(),
                    "MAPE-K baselines reloaded: no new warm-up"
                );
            }
        }
        let baselines_reloaded = !analyzer.baselines.is_empty();
        let has = |prefix: &str| {
            attached
                .iter()
                .any(|a| a.attached && a.program.starts_with(prefix))
        };
        Self {
            analyzer,
            planner: Planner::new(m.zoom_seconds),
            executor: Executor::new(m.mode),
            knowledge,
            signals: Signals {
                syscalls: has("sonde_sys_"),
                network: has("sonde_xdp") || has("sonde_tc"),
                tcp: has("sonde_tcp"),
                drops: has(signals::drops::PROGRAM_PREFIX),
                runqueue: has(signals::runqueue::PROGRAM_PREFIX),
                processes: has(signals::process::PROGRAM_PREFIX),
                block: has(signals::block::PROGRAM_PREFIX),
            },
            cycles: 0,
            last_cycle: Duration::ZERO,
            snapshot_age: Duration::ZERO,
            anomalies_total: Default::default(),
            save_failing: false,
            feedback_log: Vec::new(),
            governor,
            cpu_seconds: process_cpu_seconds(),
            serving_seconds: 0.0,
            history: Default::default(),
            cpu_usual: Default::default(),
            baselines_reloaded,
            proof_attached: has(signals::handshakes::PROGRAM),
            protected: Vec::new(),
            scrapers: guard::Scrapers::default(),
            syn_cookies: None,
            reassembly: None,
        }
    }

    /// The record of recent /metrics scrapers, which enforce mode never
    /// blocks: the HTTP layer notes each scraper's address in it.
    pub fn scrapers(&self) -> guard::Scrapers {
        self.scrapers.clone()
    }

    /// Saves the baselines; a failure is logged once (a read-only state
    /// directory should not flood the log), then retried quietly.
    pub fn save(&mut self) {
        let Some(k) = &self.knowledge else { return };
        let learned = knowledge::Learned {
            baselines: self.analyzer.baselines.clone(),
            threshold_scale: self.analyzer.threshold_scale.clone(),
            feedback: self.analyzer.feedback.clone(),
        };
        match k.save(&learned) {
            Ok(()) => self.save_failing = false,
            Err(err) if !self.save_failing => {
                self.save_failing = true;
                tracing::warn!(
                    "saving MAPE-K knowledge failed: {err}; learning continues but will not \
                     survive a restart (set [mapek] state_dir to a writable directory)"
                );
            }
            Err(_) => {}
        }
    }

    /// Applies an operator's verdict; what it changed is logged, kept for
    /// /api/v1/anomalies, and saved at once (feedback is rare and precious).
    pub fn judge(
        &mut self,
        id: u64,
        verdict: analyze::Verdict,
    ) -> Result<analyze::FeedbackOutcome, analyze::FeedbackError> {
        let outcome = self.analyzer.judge(id, verdict)?;
        tracing::info!(
            id,
            kind = outcome.kind,
            verdict = verdict.label(),
            scale = format!("{:.2} -> {:.2}", outcome.scale_before, outcome.scale_after),
            "MAPE-K feedback: {}",
            outcome.reason
        );
        self.feedback_log.push(outcome.clone());
        if self.feedback_log.len() > 64 {
            self.feedback_log.remove(0);
        }
        self.save();
        Ok(outcome)
    }

    /// JSON for /api/v1/anomalies.
    pub fn report(&self) -> serde_json::Value {
        let actions: Vec<_> = self
            .executor
            .log
            .iter()
            .map(|(t, a, mode)| json!({"time": t, "mode": mode, "decision": a}))
            .collect();
        json!({
            "active": self.analyzer.active,
            "recent": self.analyzer.closed,
            "actions": actions,
            "feedback": self.feedback_log,
            "cost": {
                "budget_ratio": self.governor.ratio,
                "cpu_budget": self.governor.cpu_budget,
                "last": self.governor.last,
                "level": self.governor.level,
                "steps_in_force": &SHED_STEPS[..self.governor.level],
                "ladder": SHED_STEPS,
            },
            "threshold_scale": self.analyzer.threshold_scale,
            // Enforce mode: sources dropped now, and blocks refused (why).
            "blocked": self.executor.blocked.values().collect::<Vec<_>>(),
            "block_refused": self.planner.refused,
            // What enforce mode never blocks (with why), and how a source
            // proves it is real.
            "protected": self.protected,
            "proof": {
                "attached": self.proof_attached,
                "program": signals::handshakes::PROGRAM,
                "window_seconds": guard::PROOF_SECONDS,
                "rule": "block only a source that completed a TCP handshake with this node \
                         (or answered one of its own) within the window; a SYN flood is never \
                         blocked",
            },
            "blocks": "new inbound TCP connections (SYN without ACK) from a blocked source \
                       are dropped; its replies to this node's connections and its non-TCP \
                       packets pass",
            "mode": self.executor.mode.label(),
            "warmup_cycles": self.analyzer.warmup,
            "baselines_reloaded": self.baselines_reloaded,
            "cycles": self.cycles,
        })
    }

    /// JSON for /api/v1/features: the detector's input, cycle by cycle,
    /// and how it names what it finds.
    pub fn features(&self) -> serde_json::Value {
        let kinds: serde_json::Map<String, serde_json::Value> = analyze::FEATURES
            .iter()
            .map(|(feature, kind, floor)| {
                ((*feature).to_owned(), json!({"kind": kind, "floor": floor}))
            })
            .collect();
        // In order: the most specific cause first.
        let explains: Vec<_> = analyze::EXPLAINS
            .iter()
            .map(|(cause, symptoms)| json!({"cause": cause, "symptoms": symptoms}))
            .collect();
        let cycles: Vec<_> = self
            .history
            .iter()
            .map(|(cycle, time, features)| json!({"cycle": cycle, "time": time, "features": features}))
            .collect();
        json!({
            "features": kinds,
            "explains": explains,
            "warmup_cycles": self.analyzer.warmup,
            "quiet_cycles": self.analyzer.quiet_cycles,
            "cycles": cycles,
        })
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        let mut total = Family::new(
            "sonde_anomalies_total",
            "Anomalies detected on this node, by kind and severity (one renamed for its cause counts under both kinds)",
            MetricType::COUNTER,
        );
        // Every kind and severity from zero: an alert or a rate() needs the
        // series before the first anomaly.
        for kind in analyze::kinds() {
            for severity in ["warning", "critical"] {
                let n = self
                    .anomalies_total
                    .get(&(kind, severity))
                    .copied()
                    .unwrap_or(0);
                total.sample(&[("kind", kind), ("severity", severity)], n as f64);
            }
        }
        total.done(&mut out);
        let mut active = Family::new(
            "sonde_anomaly_active",
            "Anomalies in progress, by kind and current severity (an alert's severity follows it)",
            MetricType::GAUGE,
        );
        for kind in analyze::kinds() {
            for (severity, label) in [
                (analyze::Severity::Warning, "warning"),
                (analyze::Severity::Critical, "critical"),
            ] {
                let on = self
                    .analyzer
                    .active
                    .iter()
                    .any(|a| a.kind == kind && a.severity == severity);
                active.sample(
                    &[("kind", kind), ("severity", label)],
                    f64::from(u8::from(on)),
                );
            }
        }
        active.done(&mut out);
        // The top culprit of each kind's latest active anomaly: one series
        // per kind (bounded), labelled with that culprit while one is
        // named, so the alert can carry it; 0 and no culprit labels else.
        let mut culprit = Family::new(
            "sonde_anomaly_culprit",
            "Share (0..1) of an active anomaly's evidence its top culprit accounts for, by kind, culprit kind and culprit, with the culprit's pod, namespace and container where the runtime names them (one series per kind; 0 without a named culprit)",
            MetricType::GAUGE,
        );
        for kind in analyze::kinds() {
            let top = self
                .analyzer
                .active
                .iter()
                .rev()
                .filter(|a| a.kind == kind)
                .find_map(|a| a.culprits.first().map(|c| (a, c)));
            match top {
                Some((anomaly, top)) => {
                    let name = top.name();
                    let mut labels = vec![
                        ("kind", kind),
                        ("culprit_kind", top.kind.label()),
                        ("culprit", name.as_str()),
                    ];
                    // Its pod, for an alert an SRE reads in cluster terms.
                    if let Some(p) = &top.pod {
                        if !p.pod.is_empty() {
                            labels.push(("culprit_namespace", p.namespace.as_str()));
                            labels.push(("culprit_pod", p.pod.as_str()));
                        }
                        // Culprits kept from an early cycle may predate the
                        // runtime's listing of their container; the
                        // anomaly, named since, knows it.
                        let container = p.container.as_deref().or(
                            if anomaly.pod.as_deref() == Some(p.pod.as_str()) {
                                anomaly.container.as_deref()
                            } else {
                                None
                            },
                        );
                        if let Some(c) = container {
                            labels.push(("culprit_container", c));
                        }
                    }
                    culprit.sample(&labels, top.share)
                }
                None => culprit.sample(&[("kind", kind)], 0.0),
            }
        }
        culprit.done(&mut out);
        let mut score = Family::new(
            "sonde_anomaly_score",
            "Last score of each feature: its distance from its learned baseline in deviations (dimensionless; compare with sonde_anomaly_score_threshold)",
            MetricType::GAUGE,
        );
        for (feature, z) in &self.analyzer.scores {
            score.sample(&[("feature", feature)], *z);
        }
        score.done(&mut out);
        let mut threshold = Family::new(
            "sonde_anomaly_score_threshold",
            "Score at or above which each feature is anomalous now, in deviations from its baseline like sonde_anomaly_score ([mapek] sensitivity scaled by operators' verdicts, or higher where the feature's floor is far above its baseline)",
            MetricType::GAUGE,
        );
        for (feature, t) in self.analyzer.score_thresholds() {
            threshold.sample(&[("feature", feature)], t);
        }
        threshold.done(&mut out);
        let mut actions = Family::new(
            "sonde_mapek_actions_total",
            "Decisions taken by the loop, by action and mode (dry_run: recorded only)",
            MetricType::COUNTER,
        );
        // From zero, so the series exist before the first decision: every
        // action in this agent's mode, and those on Sonde itself (cost,
        // attribution) as applied ("act") in every mode.
        let mode = self.executor.mode.label();
        for action in plan::Action::NAMES {
            let mode = if plan::Action::ON_SONDE_ITSELF.contains(&action) {
                "act"
            } else {
                mode
            };
            let n = self
                .executor
                .counts
                .get(&(action, mode))
                .copied()
                .unwrap_or(0);
            actions.sample(&[("action", action), ("mode", mode)], n as f64);
        }
        actions.done(&mut out);
        // Decision quality: operators' verdicts, and what they taught.
        let mut feedback = Family::new(
            "sonde_mapek_feedback_total",
            "Operators' verdicts on anomalies (POST /api/v1/anomalies/ID/feedback), by kind and verdict: the detector's measured precision",
            MetricType::COUNTER,
        );
        let mut scale = Family::new(
            "sonde_mapek_threshold_scale",
            "Scale on the deviation threshold per anomaly kind, learned from verdicts (1: as configured; >1: widened by false positives)",
            MetricType::GAUGE,
        );
        for kind in analyze::kinds() {
            let counts = self
                .analyzer
                .feedback
                .get(kind)
                .copied()
                .unwrap_or_default();
            for (verdict, n) in analyze::Verdict::NAMES
                .iter()
                .zip([counts.false_positive, counts.confirmed])
            {
                feedback.sample(&[("kind", kind), ("verdict", verdict)], n as f64);
            }
            scale.sample(&[("kind", kind)], self.analyzer.scale(kind));
        }
        feedback.done(&mut out);
        scale.done(&mut out);
        let mut ratio = Family::new(
            "sonde_overhead_budget_ratio",
            "Sonde's own cost over the last cycle against its budget ([mapek] cpu_budget, lost_events_budget): above 1, detail is shed",
            MetricType::GAUGE,
        );
        ratio.sample(&[], self.governor.ratio);
        ratio.done(&mut out);
        let mut share = Family::new(
            "sonde_overhead_cpu_ratio",
            "Share of one CPU Sonde used over the last cycle: its threads but the HTTP server's (user_space), its kernel programs (kernel_programs, with bpf_stats on), and the HTTP server's threads (http_server, outside the budget)",
            MetricType::GAUGE,
        );
        share.sample(&[("side", "user_space")], self.governor.last.user_cpu_share);
        share.sample(
            &[("side", "http_server")],
            self.governor.last.serving_cpu_share,
        );
        if let Some(k) = self.governor.last.kernel_cpu_share {
            share.sample(&[("side", "kernel_programs")], k);
        }
        share.done(&mut out);
        let mut level = Family::new(
            "sonde_overhead_shed_level",
            "Steps of the cost ladder in force (0: full detail)",
            MetricType::GAUGE,
        );
        level.sample(&[], self.governor.level as f64);
        level.done(&mut out);
        let mut cycle = Family::new(
            "sonde_mapek_cycle_duration_seconds",
            "Time the last MAPE-K cycle took",
            MetricType::GAUGE,
        );
        cycle.sample(&[], self.last_cycle.as_secs_f64());
        cycle.done(&mut out);
        let mut age = Family::new(
            "sonde_mapek_snapshot_age_seconds",
            "How old the kernel snapshot was when the last MAPE-K cycle began analysing it: what the loop decides on is this much behind the kernel",
            MetricType::GAUGE,
        );
        age.sample(&[], self.snapshot_age.as_secs_f64());
        age.done(&mut out);
        out
    }
}

/// What the loop reads each cycle: the configuration as it is now
/// (SIGHUP changes it), the collector (its snapshots, and the handle its
/// decisions go through) and the process churn the event reader counts.
#[derive(Clone)]
pub struct Inputs {
    pub config: Arc<RwLock<Config>>,
    pub collector: Arc<CollectorHandle>,
    pub events: Arc<Events>,
    /// CPU time of the HTTP server's threads: serving is not telemetry,
    /// and a flood of requests must not make the governor shed signals.
    pub serving_cpu: Arc<crate::time::ThreadCpu>,
    /// The loop's supervised task (`mapek`): beaten every cycle.
    pub task: Arc<crate::tasks::Task>,
}

impl Inputs {
    /// The agent's CPU seconds without the HTTP server's.
    fn telemetry_cpu_seconds(&self) -> Option<(f64, f64)> {
        let serving = self.serving_cpu.seconds();
        process_cpu_seconds().map(|all| ((all - serving).max(0.0), serving))
    }

    fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.collector
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Runs the loop until `shutdown` changes: one cycle per new snapshot,
/// started when the collector publishes it.
pub async fn run(
    inputs: Inputs,
    mapek: SharedMapek,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(inputs.config().collector.interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut prev = inputs.snapshot();
    {
        let mut m = mapek.lock().unwrap_or_else(|e| e.into_inner());
        let cpu = inputs.telemetry_cpu_seconds();
        m.cpu_seconds = cpu.map(|c| c.0);
        m.serving_seconds = cpu.map_or(0.0, |c| c.1);
    }
    loop {
        // A cycle runs as soon as the collector publishes; the tick only
        // keeps the task beating while the collector is slow.
        tokio::select! {
            _ = inputs.collector.published.notified() => {}
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        inputs.task.beat_async().await;
        let now = inputs.snapshot();
        if Arc::ptr_eq(&now, &prev) {
            continue; // no new snapshot yet
        }
        let started = Instant::now();
        let mut m = mapek.lock().unwrap_or_else(|e| e.into_inner());
        m.snapshot_age = now.taken_at.map_or(Duration::ZERO, |taken| {
            started.saturating_duration_since(taken)
        });
        let cpu_now = inputs.telemetry_cpu_seconds();
        let cost = match (m.cpu_seconds, cpu_now) {
            (Some(before), Some((after, serving))) => {
                govern::Cost::between(&prev, &now, (before, after)).map(|mut cost| {
                    cost.serving_cpu_share = now
                        .seconds_since(&prev)
                        .map_or(0.0, |dt| (serving - m.serving_seconds).max(0.0) / dt);
                    cost
                })
            }
            _ => None,
        };
        m.cpu_seconds = cpu_now.map(|c| c.0);
        m.serving_seconds = cpu_now.map_or(m.serving_seconds, |c| c.1);
        let cost_action = cost.and_then(|c| m.governor.observe(c));
        let churn = inputs.events.take_churn();
        if let Some((features, mut subjects)) = monitor::features(&prev, &now, &m.signals) {
            subjects.busiest_parent = churn.first().copied();
            subjects.parents = churn;
            let contended = m.analyzer.active.iter().any(|a| a.kind == "cpu_saturation");
            m.cpu_usual.observe(&mut subjects.cgroups, contended);
            let t = unix_seconds(SystemTime::now());
            let opened = m.analyzer.observe(&features, &subjects, t);
            let cycle = m.cycles;
            m.history.push_back((cycle, t, features));
            if m.history.len() > FEATURE_HISTORY {
                m.history.pop_front();
            }
            for anomaly in &opened {
                tracing::warn!(
                    id = anomaly.id,
                    kind = anomaly.kind,
                    score = format!("{:.1}", anomaly.score),
                    subject = anomaly.subject.as_deref().unwrap_or("-"),
                    "anomaly: {:?}",
                    anomaly.evidence
                );
                let severity = match anomaly.severity {
                    analyze::Severity::Warning => "warning",
                    analyze::Severity::Critical => "critical",
                };
                *m.anomalies_total
                    .entry((anomaly.kind, severity))
                    .or_default() += 1;
            }
            let config = inputs.config();
            m.executor.set_mode(config.mapek.mode, &inputs.collector);
            {
                let m = &mut *m;
                kernel_notes::update(&mut m.analyzer.active, &mut m.syn_cookies);
                kernel_notes::update(&mut m.analyzer.active, &mut m.reassembly);
            }
            let active = m.analyzer.active.clone();
            let m = &mut *m;
            let handshakes = now
                .reading::<signals::handshakes::Handshakes>()
                .filter(|_| m.proof_attached);
            let now_ns = crate::time::monotonic_ns();
            let enforcing = config.mapek.mode == crate::config::Mode::Enforce;
            // The protected set, read when a source is about to be blocked
            // (and every few cycles in enforce mode, for the report).
            let mut protected = (enforcing && m.cycles.is_multiple_of(PROTECTED_EVERY))
                .then(|| guard::protected(&config.mapek, &guard::System::read(&m.scrapers)));
            let mut actions = m.planner.plan(&opened, &active, t, &config, |peer| {
                let set = protected.get_or_insert_with(|| {
                    guard::protected(&config.mapek, &guard::System::read(&m.scrapers))
                });
                guard::refusal(peer, set, handshakes, now_ns)
            });
            for action in &mut actions {
                if let plan::Action::Block { peer, reason, .. } = action {
                    reason.push_str(&guard::proof_text(*peer, handshakes, now_ns));
                }
            }
            if let Some((set, _)) = protected {
                m.protected = set;
            } else if !enforcing {
                m.protected.clear();
            }
            actions.extend(cost_action);
            m.executor.execute(actions, t, &inputs.collector);
            m.cycles += 1;
            if m.cycles.is_multiple_of(SAVE_EVERY) {
                m.save();
            }
        }
        m.last_cycle = started.elapsed();
        drop(m);
        prev = now;
    }
    mapek.lock().unwrap_or_else(|e| e.into_inner()).save();
}
