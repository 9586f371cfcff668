//! `cargo xtask eval [--smoke]`: how good Sonde's anomaly detector is, on
//! the real kernel with real tools and labelled ground truth. It creates a
//! network namespace and a veth pair, runs a normal load (HTTP under wrk,
//! iperf3, a compiler-like syscall mix) for calibration and a long
//! false-positive run, injects incidents one at a time (scenarios.rs),
//! restarts the agent half-way (its learned state must carry over without
//! a new warm-up), and scores what the agent reported against what was
//! injected — side by side with a plain 3-sigma fixed-window detector
//! replayed on the same feature vectors (score.rs). An incident whose
//! referee (referee.rs) saw no effect is scored as normal load.
//!
//! A full run writes docs/eval.{md,json}; `--smoke` (a few scenarios,
//! seconds each, in `cargo xtask test`) writes target/eval/ and fails
//! unless every smoke incident is detected and named right.

mod comparators;
mod referee;
pub mod scenarios;
mod score;

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::Value;

use crate::{
    bench::common::{Agent, BenchNet, Bins, net, start_agent},
    util,
};
use scenarios::{INCIDENTS, Incident, NormalLoad};
use score::{Cycle, Naming, Phase, Record, Scope, Score};
use sonde_tests::{
    http::Response,
    process::{Scratch, scratch_path},
    sys,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Short run (about 2 minutes): a few incidents, a short
    /// false-positive run; writes to target/eval.
    #[arg(long)]
    smoke: bool,
    /// Minutes of normal load in the false-positive run (full run).
    #[arg(long, default_value_t = 10)]
    normal_minutes: u64,
    /// Run only these incidents (comma-separated ids); results go to
    /// target/eval.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Use the release binaries already in target/release.
    #[arg(long)]
    no_build: bool,
}

impl Options {
    pub fn smoke() -> Options {
        Options {
            smoke: true,
            normal_minutes: 0,
            only: Vec::new(),
            no_build: false,
        }
    }
}

/// The knobs of one run.
struct Plan {
    interval_ms: u64,
    warmup_cycles: u64,
    fp_run: Duration,
    incident: Duration,
    /// Most time given to the agent to close an incident's anomalies.
    recovery_max: Duration,
    incidents: Vec<&'static Incident>,
    /// Incidents before the restart; the rest come after it.
    before_restart: usize,
}

impl Plan {
    fn new(opts: &Options) -> Plan {
        if opts.smoke {
            let pick = [
                "syscall-storm",
                "syn-flood",
                "connection-storm",
                "udp-flood",
                "refused-closed-port",
                "exec-storm",
            ];
            Plan {
                interval_ms: 500,
                warmup_cycles: 30,
                fp_run: Duration::from_secs(15),
                incident: Duration::from_secs(3),
                recovery_max: Duration::from_secs(10),
                incidents: INCIDENTS.iter().filter(|i| pick.contains(&i.id)).collect(),
                before_restart: 2,
            }
        } else {
            let incidents: Vec<&Incident> = INCIDENTS
                .iter()
                .filter(|i| opts.only.is_empty() || opts.only.iter().any(|o| o == i.id))
                .collect();
            Plan {
                interval_ms: 1000,
                warmup_cycles: 60,
                fp_run: Duration::from_secs(opts.normal_minutes * 60),
                incident: Duration::from_secs(6),
                recovery_max: Duration::from_secs(30),
                before_restart: incidents.len() / 2,
                incidents,
            }
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// A generous bound on the whole run, for the normal load's lifetime.
    fn bound(&self) -> Duration {
        let cycles = self.interval() * (self.warmup_cycles as u32 + 20);
        cycles
            + self.fp_run
            + (self.incident + self.recovery_max + Duration::from_secs(5))
                * self.incidents.len() as u32
            + Duration::from_secs(120)
    }
}

/// The tools the normal load and the incidents run (the soak's too).
pub const TOOLS: [(&str, &str); 9] = [
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("tc", "iproute2"),
    ("iptables", "iptables"),
    ("iperf3", "iperf3"),
    ("wrk", "wrk"),
    ("stress-ng", "stress-ng"),
    ("hping3", "hping3"),
    ("nmap", "nmap"),
];

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::bench::common::use_net(&crate::bench::common::EVAL);
    if !util::is_root() {
        bail!(
            "cargo xtask eval loads eBPF programs, creates a network namespace and injects \
             incidents with tc and iptables: run it as root (e.g. `sudo -E cargo xtask eval`)"
        );
    }
    crate::bootstrap::ensure_tools(&TOOLS, "the evaluation")?;
    let started = Instant::now();
    let bins = Bins::release(opts.no_build)?;
    sys::mount_tracefs(false)?;
    for id in &opts.only {
        if !INCIDENTS.iter().any(|i| i.id == id) {
            bail!(
                "--only {id}: no such incident (one of {})",
                INCIDENTS
                    .iter()
                    .map(|i| i.id)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let plan = Plan::new(&opts);
    let _scratch = Scratch::create()?;
    scenarios::remove_leftovers();
    let net = BenchNet::create()?;
    let result = evaluate(&plan, &bins);
    drop(net);
    scenarios::remove_leftovers();
    let report = result?;

    let md = markdown(&report);
    println!("\n{md}");
    let (dir, name) = if opts.smoke {
        (util::target_dir().join("eval"), "smoke")
    } else if !opts.only.is_empty() {
        (util::target_dir().join("eval"), "only")
    } else {
        (util::workspace_root().join("docs"), "eval")
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |ext: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("{name}.{ext}"));
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    write("json", serde_json::to_string_pretty(&report)? + "\n")?;
    let md_path = write("md", md)?;
    println!(
        "eval: wrote {} in {}",
        md_path.display(),
        util::human(started.elapsed())
    );
    let sonde = &report.detectors[0];
    if !sonde.detected_without_subject.is_empty() {
        bail!(
            "evaluation: incidents detected without a subject (an alarm that names nobody): {}",
            sonde.detected_without_subject.join(", ")
        );
    }
    if opts.smoke {
        let wrong: Vec<String> = sonde
            .incidents
            .iter()
            .filter(|i| !i.detected || !i.kind_correct)
            .map(|i| format!("{} (named {:?})", i.incident, i.named))
            .collect();
        if !wrong.is_empty() {
            bail!(
                "smoke evaluation: incidents missed or misnamed: {}",
                wrong.join(", ")
            );
        }
    }
    Ok(())
}

/// The results file.
#[derive(Debug, Serialize)]
struct Report {
    date: String,
    smoke: bool,
    kernel: String,
    cycle_seconds: f64,
    warmup_cycles: u64,
    phases: Vec<Phase>,
    incidents: Vec<IncidentRow>,
    detectors: Vec<Score>,
    /// The same, for the tuned incidents and for the held-out set
    /// (empty when the run had no held-out incident).
    split: Vec<Vec<Score>>,
    /// Anomalies Sonde opened in the first cycles after the restart.
    restart: RestartCheck,
    /// Incidents that began with detail shed by the cost governor (its
    /// level then), when recovery's bound ran out before it restored all.
    began_shed: Vec<(&'static str, usize)>,
    duration_s: f64,
}

#[derive(Debug, Serialize)]
struct IncidentRow {
    id: &'static str,
    kind: &'static str,
    /// Kinds of the further faults made with it ([`Incident::also`]).
    also: Vec<&'static str>,
    how: &'static str,
    held_out: bool,
    /// What its referee read, for the kinds that have one.
    referee: Option<referee::Reading>,
}

#[derive(Debug, Serialize)]
struct RestartCheck {
    baselines_reloaded: bool,
    anomalies_in_first_minute: usize,
}

/// Everything the agent reported, over one or more agent runs.
#[derive(Default)]
struct Recorder {
    /// (agent run, anomaly id) → record.
    records: BTreeMap<(u32, u64), Record>,
    /// (agent run, cycle) → cycle.
    cycles: BTreeMap<(u32, u64), Cycle>,
    naming: Naming,
    run: u32,
}

impl Recorder {
    fn poll(&mut self, agent: &Agent) -> anyhow::Result<()> {
        let Response { status, body, .. } = agent.try_request("GET", "/api/v1/anomalies")?;
        if status != 200 {
            bail!("GET /api/v1/anomalies answered {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body).context("parsing /api/v1/anomalies")?;
        for a in ["active", "recent"]
            .iter()
            .filter_map(|k| v[k].as_array())
            .flatten()
        {
            let (Some(id), Some(kind), Some(start)) =
                (a["id"].as_u64(), a["kind"].as_str(), a["start"].as_f64())
            else {
                continue;
            };
            self.records.insert(
                (self.run, id),
                Record {
                    kind: kind.to_owned(),
                    start,
                    subject: a["subject"].as_str().map(str::to_owned),
                    culprit: top_culprit(&a["culprits"][0]),
                },
            );
        }
        let Response { status, body, .. } = agent.try_request("GET", "/api/v1/features")?;
        if status != 200 {
            bail!("GET /api/v1/features answered {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body).context("parsing /api/v1/features")?;
        self.naming.kinds = v["features"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(f, d)| Some((f.clone(), d["kind"].as_str()?.to_owned())))
            .collect();
        // In the agent's order: the most specific cause first.
        self.naming.explains = v["explains"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let symptoms = e["symptoms"]
                    .as_array()?
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect();
                Some((e["cause"].as_str()?.to_owned(), symptoms))
            })
            .collect();
        self.naming.quiet_cycles = v["quiet_cycles"].as_u64().unwrap_or(3) as u32;
        for c in v["cycles"].as_array().into_iter().flatten() {
            let (Some(cycle), Some(time)) = (c["cycle"].as_u64(), c["time"].as_f64()) else {
                continue;
            };
            let features = c["features"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(f, x)| Some((f.clone(), x.as_f64()?)))
                .collect();
            self.cycles
                .insert((self.run, cycle), Cycle { time, features });
        }
        Ok(())
    }

    /// Sleeps `d`, polling the agent often enough to miss nothing.
    fn wait(&mut self, agent: &Agent, d: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::thread::sleep((end - Instant::now()).min(Duration::from_secs(30)));
            self.poll(agent)?;
        }
        Ok(())
    }

    fn state(agent: &Agent) -> anyhow::Result<AgentState> {
        let body = agent.try_request("GET", "/api/v1/anomalies")?.body;
        let v: Value = serde_json::from_str(&body).context("parsing /api/v1/anomalies")?;
        Ok(AgentState {
            active: v["active"].as_array().map_or(0, Vec::len),
            shed_level: v["cost"]["level"].as_u64().unwrap_or(0) as usize,
        })
    }
}

/// What recovery waits on.
struct AgentState {
    /// Anomalies open.
    active: usize,
    /// Steps of detail the cost governor has shed.
    shed_level: usize,
}

impl AgentState {
    fn busy(&self) -> bool {
        self.active > 0 || self.shed_level > 0
    }
}

/// A culprit's typed names (address, or pid, comm and cgroup), space
/// separated, for scoring.
fn top_culprit(c: &Value) -> Option<String> {
    let names: Vec<String> = [
        "peer",
        "pid",
        "comm",
        "cgroup",
        "reason",
        "interface",
        "device",
    ]
    .iter()
    .filter_map(|k| match &c[*k] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
    .collect();
    (!names.is_empty()).then(|| names.join(" "))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn agent_config(plan: &Plan, state_dir: &std::path::Path) -> String {
    format!(
        "[collector]\ninterval_ms = {}\n[mapek]\nwarmup_cycles = {}\nstate_dir = \"{}\"\n",
        plan.interval_ms,
        plan.warmup_cycles,
        state_dir.display()
    )
}

fn evaluate(plan: &Plan, bins: &Bins) -> anyhow::Result<Report> {
    let started = Instant::now();
    let state_dir = scratch_path("state");
    fs::create_dir_all(&state_dir)?;
    let config = agent_config(plan, &state_dir);
    util::header("eval: normal load and calibration");
    let _load = NormalLoad::start(bins, plan.bound().as_secs())?;
    let mut agent = start_agent(bins, &config, &[net().host_if])?;
    let mut rec = Recorder::default();
    let mut phases = Vec::new();
    // An incident of two faults is a phase per fault, in the same window.
    let mut phase = |name: &str, incident: Option<&Incident>, start: f64, end: f64| {
        let faults = incident.map(|i| {
            std::iter::once((name.to_owned(), i.kind, i.subject)).chain(
                i.also
                    .iter()
                    .map(|&(kind, subject)| (also_name(i.id, kind), kind, subject)),
            )
        });
        let Some(faults) = faults else {
            phases.push(Phase {
                name: name.to_owned(),
                held_out: false,
                expected: None,
                subject: None,
                start,
                end,
            });
            return;
        };
        for (name, kind, subject) in faults {
            phases.push(Phase {
                name,
                held_out: incident.is_some_and(|i| i.held_out),
                expected: Some(kind.to_owned()),
                subject: subject.map(str::to_owned),
                start,
                end,
            });
        }
    };
    // Calibration: the warm-up plus a few cycles; not scored (the agent
    // cannot alarm during warm-up).
    rec.wait(&agent, plan.interval() * (plan.warmup_cycles as u32 + 5))?;
    let t = now();
    println!("eval: false-positive run, {}", util::human(plan.fp_run));
    rec.wait(&agent, plan.fp_run)?;
    phase("false-positive run", None, t, now());

    let mut began_shed = Vec::new();
    let mut readings = BTreeMap::new();
    let mut restart = RestartCheck {
        baselines_reloaded: false,
        anomalies_in_first_minute: 0,
    };
    for (i, incident) in plan.incidents.iter().enumerate() {
        if i == plan.before_restart {
            util::header("eval: restart (learned state must carry over)");
            rec.poll(&agent)?;
            agent.stop()?;
            rec.run += 1;
            agent = start_agent(bins, &config, &[net().host_if])?;
            let t = now();
            restart.baselines_reloaded = reloaded(&agent);
            let settle = plan.interval() * 20;
            rec.wait(&agent, settle)?;
            let after: usize = rec
                .records
                .iter()
                .filter(|((run, _), r)| *run == rec.run && r.start >= t)
                .count();
            restart.anomalies_in_first_minute = after;
            phase("after restart", None, t, now());
        }
        util::header(&format!("eval: {} ({})", incident.id, incident.how));
        let shed = Recorder::state(&agent)?.shed_level;
        if shed > 0 {
            began_shed.push((incident.id, shed));
        }
        let referee = referee::of(incident.kind);
        let before = referee.map(|_| {
            let sampler = referee::Sampler::start(net().peer_ip);
            std::thread::sleep(referee::BEFORE);
            sampler.finish()
        });
        let during = referee.map(|_| referee::Sampler::start(net().peer_ip));
        let t0 = now();
        (incident.run)(bins, plan.incident).with_context(|| format!("incident {}", incident.id))?;
        let t1 = now();
        let reading = referee
            .zip(before)
            .zip(during)
            .and_then(|((what, before), during)| referee::judge(what, &before, &during.finish()));
        // A fault that moved nothing is scored as the normal load it was.
        let void = reading.as_ref().is_some_and(|r| !r.effect);
        if let Some(r) = reading {
            println!(
                "eval: referee of {}: {:.2} before (max), {:.2} during (median){}",
                incident.id,
                r.before_max,
                r.during_median,
                if void {
                    ": no effect, scored as normal load"
                } else {
                    ""
                }
            );
            readings.insert(incident.id, r);
        }
        phase(incident.id, (!void).then_some(*incident), t0, t1);
        // Recovery: until the anomalies are over and the cost governor
        // has restored the detail a flood made it shed (then a few more
        // cycles), within the bound: each incident meets the agent a
        // quiet node would have, not one still recovering from the last
        // (27 incidents in minutes are denser than a node's week).
        // Scored as normal load.
        let r0 = now();
        let deadline = Instant::now() + plan.recovery_max;
        std::thread::sleep(plan.interval() * 3);
        while Recorder::state(&agent)?.busy() && Instant::now() < deadline {
            std::thread::sleep(plan.interval());
        }
        rec.wait(&agent, plan.interval() * 5)?;
        phase("recovery", None, r0, now());
    }
    rec.poll(&agent)?;
    agent.stop()?;

    // What the detectors saw, for a look at why something fired or not.
    let trace_dir = util::target_dir().join("eval");
    fs::create_dir_all(&trace_dir)?;
    let trace = serde_json::json!({
        "phases": &phases,
        "records": rec.records.values().collect::<Vec<_>>(),
        "cycles": rec.cycles.values().map(|c| serde_json::json!({"time": c.time, "features": c.features})).collect::<Vec<_>>(),
    });
    fs::write(trace_dir.join("trace.json"), serde_json::to_string(&trace)?)?;

    let interval = plan.interval().as_secs_f64();
    let grace = 2.0 * interval;
    let mut sonde: Vec<Record> = rec.records.values().cloned().collect();
    sonde.sort_by(|a, b| a.start.total_cmp(&b.start));
    let cycles: Vec<Cycle> = rec.cycles.values().cloned().collect();
    let score = |name: &str, records: &[Record], scope: Scope| {
        score::score(
            name,
            records,
            &phases,
            interval,
            grace,
            "false-positive run",
            scope,
        )
    };
    let mut runs = vec![("sonde".to_owned(), sonde)];
    for mut judge in comparators::all() {
        let records = comparators::replay(&cycles, &rec.naming, judge.as_mut());
        runs.push((judge.name(), records));
    }
    let detectors = runs
        .iter()
        .map(|(name, records)| score(name, records, Scope::All))
        .collect();
    // The tuned and held-out sets apart, when the run has both.
    let split = if plan.incidents.iter().any(|i| i.held_out) {
        [Scope::Tuned, Scope::HeldOut]
            .iter()
            .map(|&scope| {
                runs.iter()
                    .map(|(name, records)| score(name, records, scope))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Report {
        date: util::today(),
        smoke: plan.incidents.len() < INCIDENTS.len(),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cycle_seconds: interval,
        warmup_cycles: plan.warmup_cycles,
        phases,
        incidents: plan
            .incidents
            .iter()
            .map(|i| IncidentRow {
                id: i.id,
                kind: i.kind,
                also: i.also.iter().map(|&(kind, _)| kind).collect(),
                how: i.how,
                held_out: i.held_out,
                referee: readings.get(i.id).cloned(),
            })
            .collect(),
        detectors,
        split,
        restart,
        began_shed,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

/// The phase name of an incident's further fault of `kind`.
fn also_name(id: &str, kind: &str) -> String {
    format!("{id} ({kind})")
}

/// Whether the restarted agent says it reloaded its baselines.
fn reloaded(agent: &Agent) -> bool {
    agent
        .try_request("GET", "/api/v1/anomalies")
        .ok()
        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
        .and_then(|v| v["baselines_reloaded"].as_bool())
        .unwrap_or(false)
}

fn pct(x: f64) -> String {
    format!("{:.2}", x)
}

/// A table's header: the given columns, then one per detector.
fn header(md: &mut String, columns: &[&str], detectors: &[Score]) {
    let names = columns
        .iter()
        .copied()
        .chain(detectors.iter().map(|d| d.detector.as_str()));
    let names: Vec<&str> = names.collect();
    md.push_str(&format!("| {} |\n", names.join(" | ")));
    md.push_str(&format!("|{}\n", "---|".repeat(names.len())));
}

fn markdown(r: &Report) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "# Anomaly detection evaluation{}\n\n\
         Generated by `cargo xtask eval{}` on {} (kernel {}), {:.0} s. Cycle {} s, warm-up {} cycles. \
         Normal load throughout: a keep-alive HTTP service under wrk (~2,000 req/s over a veth pair), \
         an iperf3 stream at 20 Mbit/s, a compiler-like syscall mix with 4 exec/s. \
         The comparators (a fixed-window 3-sigma rule, a robust median/MAD rule and Netdata's \
         per-metric k-means with its defaults) are replayed on the same feature vectors (from \
         `/api/v1/features`) with the same naming rules; each differs only in how it decides a \
         value is abnormal, and none names a culprit.\n\n",
        if r.smoke { " (smoke)" } else { "" },
        if r.smoke { " --smoke" } else { "" },
        r.date,
        r.kernel,
        r.duration_s,
        r.cycle_seconds,
        r.warmup_cycles,
    ));
    header(&mut md, &["", "target"], &r.detectors);
    let row = |md: &mut String, name: &str, target: &str, f: &dyn Fn(&Score) -> String| {
        md.push_str(&format!("| {name} | {target} |"));
        for d in &r.detectors {
            md.push_str(&format!(" {} |", f(d)));
        }
        md.push('\n');
    };
    row(
        &mut md,
        "precision (records of the right kind in an incident / all records)",
        "≥ 0.95",
        &|d| format!("{} ({}/{})", pct(d.precision), d.true_positives, d.records),
    );
    row(
        &mut md,
        "recall (incidents detected with the right kind)",
        "≥ 0.95",
        &|d| pct(d.recall),
    );
    let best_f1 = r.detectors[1..].iter().map(|d| d.f1).fold(0.0, f64::max);
    row(&mut md, "F1", "≥ 1.3× the best comparator's", &|d| {
        if d.detector == "sonde" && best_f1 > 0.0 {
            format!(
                "{} ({:.2}× the best comparator's)",
                pct(d.f1),
                d.f1 / best_f1
            )
        } else {
            pct(d.f1)
        }
    });
    row(
        &mut md,
        "kind correct (first record in the window)",
        "≥ 0.90",
        &|d| pct(d.kind_accuracy),
    );
    row(
        &mut md,
        "time to detect, max (mean) in cycles",
        "≤ 2",
        &|d| match (d.max_cycles_to_detect, d.mean_cycles_to_detect) {
            (Some(m), Some(a)) => format!("{m} ({a:.1})"),
            _ => "-".into(),
        },
    );
    row(
        &mut md,
        "culprit named in the subject (source peer, parent process, cgroup, device)",
        "",
        &|d| format!("{}/{}", d.subjects_named.0, d.subjects_named.1),
    );
    row(
        &mut md,
        "culprit accuracy (top typed culprit is the right peer/process/cgroup)",
        "≥ 0.95",
        &|d| {
            format!(
                "{} ({}/{})",
                pct(d.culprit_accuracy),
                d.culprits_right.0,
                d.culprits_right.1
            )
        },
    );
    row(&mut md, "detected without a subject", "0", &|d| {
        d.detected_without_subject.len().to_string()
    });
    let fp_minutes = r
        .phases
        .iter()
        .find(|p| p.name == "false-positive run")
        .map_or(0.0, |p| (p.end - p.start) / 60.0);
    row(
        &mut md,
        &format!("false positives in the {fp_minutes:.1}-minute normal run"),
        "0",
        &|d| d.fp_run_false_positives.to_string(),
    );
    row(
        &mut md,
        "false positives under normal load, all (kinds)",
        "",
        &|d| {
            let kinds: Vec<String> = d
                .false_positive_kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            format!(
                "{} in {:.0} s{}",
                d.normal_false_positives,
                d.normal_seconds,
                if kinds.is_empty() {
                    String::new()
                } else {
                    format!(" (all wrong records: {})", kinds.join(", "))
                }
            )
        },
    );
    md.push_str(&format!(
        "\nRestart half-way with the same state directory: baselines reloaded = {}, anomalies in the next 20 cycles = {} (target 0: no re-warm-up alarm storm).\n",
        r.restart.baselines_reloaded, r.restart.anomalies_in_first_minute
    ));
    md.push_str(&if r.began_shed.is_empty() {
        "\nEvery incident began with full detail: recovery waits for the cost governor to restore what a flood made it shed (`[mapek] cpu_budget`).\n".to_owned()
    } else {
        format!(
            "\nIncidents that began with detail shed by the cost governor (recovery's bound ran out first), with the steps in force: {}.\n",
            r.began_shed
                .iter()
                .map(|(id, level)| format!("{id} ({level})"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    if let [tuned, held_out] = r.split.as_slice() {
        let n = |scores: &[Score]| scores.first().map_or(0, |s| s.incidents.len());
        md.push_str(&format!(
            "\n## Tuned and held-out incidents\n\n\
             The held-out set ({} incidents, marked below) was written before any tuning and never \
             tuned on; the tuned set ({} incidents) is the rest. Both share the normal load, so \
             their false positives are the same.\n\n\
             | detector | set | precision | recall | F1 | culprit accuracy |\n|---|---|---|---|---|---|\n",
            n(held_out),
            n(tuned)
        ));
        for (t, h) in tuned.iter().zip(held_out) {
            for (set, d) in [("tuned", t), ("held out", h)] {
                md.push_str(&format!(
                    "| {} | {set} | {} ({}/{}) | {} | {} | {} ({}/{}) |\n",
                    d.detector,
                    pct(d.precision),
                    d.true_positives,
                    d.records,
                    pct(d.recall),
                    pct(d.f1),
                    pct(d.culprit_accuracy),
                    d.culprits_right.0,
                    d.culprits_right.1
                ));
            }
        }
    }
    md.push_str("\n## Incidents\n\n");
    header(&mut md, &["incident", "how", "expected kind"], &r.detectors);
    let faults = r.incidents.iter().flat_map(|inc| {
        std::iter::once((inc, inc.id.to_owned(), inc.kind)).chain(
            inc.also
                .iter()
                .map(move |&kind| (inc, also_name(inc.id, kind), kind)),
        )
    });
    for (inc, name, kind) in faults {
        let id = if inc.held_out {
            format!("{name} (held out)")
        } else {
            name.clone()
        };
        md.push_str(&format!("| {id} | {} | {kind} |", inc.how));
        if inc.referee.as_ref().is_some_and(|r| !r.effect) {
            for _ in &r.detectors {
                md.push_str(" not scored: its referee saw no effect (below) |");
            }
            md.push('\n');
            continue;
        }
        for d in &r.detectors {
            let Some(o) = d.incidents.iter().find(|o| o.incident == name) else {
                md.push_str(" - |");
                continue;
            };
            let cell = match (o.detected, o.cycles_to_detect) {
                (true, Some(c)) => {
                    format!("detected in {c} cycle{}", if c == 1 { "" } else { "s" })
                }
                _ => "missed".into(),
            };
            let named = if o.named.is_empty() {
                String::new()
            } else {
                format!("; named {}", o.named.join(", "))
            };
            let subject = o
                .subject
                .as_ref()
                .map(|s| format!("; subject: {s}"))
                .unwrap_or_default();
            let subject = match (&o.culprit, o.culprit_correct) {
                (Some(c), Some(right)) => format!(
                    "{subject}; top culprit {c} ({})",
                    if right { "right" } else { "wrong" }
                ),
                _ => subject,
            };
            md.push_str(&format!(" {cell}{named}{subject} |"));
        }
        md.push('\n');
    }
    let refereed: Vec<&IncidentRow> = r.incidents.iter().filter(|i| i.referee.is_some()).collect();
    if !refereed.is_empty() {
        md.push_str(&format!(
            "\n## Referee\n\n\
             What the kernel said each refereed incident did, read apart from Sonde: the highest \
             value in the {} s before it, and the median over its second half. An incident whose \
             median stayed inside the range before it moved nothing; it is scored as normal load \
             (any record in it is a false positive, for every detector).\n\n\
             | incident | referee | before (max) | during (median) | samples | effect |\n\
             |---|---|---|---|---|---|\n",
            referee::BEFORE.as_secs()
        ));
        for inc in refereed {
            if let Some(x) = &inc.referee {
                md.push_str(&format!(
                    "| {} | {} | {:.2} | {:.2} | {}, {} | {} |\n",
                    inc.id,
                    x.what,
                    x.before_max,
                    x.during_median,
                    x.samples.0,
                    x.samples.1,
                    if x.effect { "yes" } else { "none: not scored" }
                ));
            }
        }
    }
    md
}
