//! Health: liveness, readiness and startup, each a set of component checks
//! run with their own timeout. A failing optional component makes the status
//! `degraded` (HTTP 200); a failing required one makes it `failed` (503).
//! Results are also exported as metrics, and refreshed in the background so
//! alerts work even when nothing polls the endpoints. Every supervised task
//! (`tasks`) is a check named `task.NAME` on the endpoint its role names.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{pods::Runtime, state::AppState, tasks::Role, time::now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Degraded,
    Failed,
}

impl Status {
    const ALL: [Self; 3] = [Self::Ok, Self::Degraded, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub component: String,
    pub status: Status,
    pub latency_ms: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: Status,
    pub checks: Vec<CheckResult>,
}

/// A component's verdict, before timing: (status, error).
type Verdict = (Status, Option<String>);
/// Named checks to run, in order.
type Components = Vec<(String, Box<dyn FnOnce(&AppState) -> Verdict + Send>)>;

/// Readiness: required probes attached, ring readers alive and keeping up,
/// collector fresh.
pub async fn readiness(state: &AppState) -> Report {
    let mut components: Components = Vec::new();
    components.push(("probes".into(), Box::new(check_probes)));
    components.push(("collector".into(), Box::new(check_collector)));
    for ring in &state.events.rings {
        let label = ring.label;
        components.push((
            format!("ring.{label}"),
            Box::new(move |s: &AppState| check_ring(s, label)),
        ));
    }
    if state.config_snapshot().kubernetes.enabled {
        components.push(("kubernetes".into(), Box::new(check_kubernetes)));
    }
    push_tasks(state, &mut components, &[Role::Readiness, Role::Degraded]);
    run(state, components).await
}

/// The container runtime that names pods: down is degraded (names fall
/// back to cgroup paths); no runtime socket at all is a node without
/// Kubernetes, fine.
fn check_kubernetes(_: &AppState) -> Verdict {
    match crate::pods::cache().runtime() {
        Runtime::Down { socket, error } => (
            Status::Degraded,
            Some(format!(
                "container runtime at {socket} unreachable, pods named by cgroup path only: {error}"
            )),
        ),
        Runtime::Off | Runtime::NotFound | Runtime::Up { .. } => (Status::Ok, None),
    }
}

/// A check per supervised task with one of `roles`, named `task.NAME`:
/// failed when the task is down (degraded for [`Role::Degraded`]).
fn push_tasks(state: &AppState, components: &mut Components, roles: &[Role]) {
    for task in state.tasks.all() {
        if !roles.contains(&task.role) {
            continue;
        }
        let down = if task.role == Role::Degraded {
            Status::Degraded
        } else {
            Status::Failed
        };
        components.push((
            format!("task.{}", task.name),
            Box::new(move |_: &AppState| match task.problem() {
                None => (Status::Ok, None),
                Some(why) => (down, Some(why)),
            }),
        ));
    }
}

/// Liveness: the process answers, its collector thread is running and
/// every liveness task (the collector) beats.
pub async fn liveness(state: &AppState) -> Report {
    let mut components: Components = vec![(
        "process".into(),
        Box::new(|s: &AppState| {
            if s.collector.is_alive() {
                (Status::Ok, None)
            } else {
                (Status::Failed, Some("collector thread exited".into()))
            }
        }),
    )];
    push_tasks(state, &mut components, &[Role::Liveness]);
    run(state, components).await
}

/// Startup: the agent state exists only once every program is loaded and
/// attached (before that, the HTTP layer answers 503 itself).
pub async fn startup(state: &AppState) -> Report {
    let components: Components = vec![(
        "startup".into(),
        Box::new(|_: &AppState| (Status::Ok, None)),
    )];
    run(state, components).await
}

async fn run(state: &AppState, components: Components) -> Report {
    let timeout = Duration::from_millis(state.config_snapshot().health.check_timeout_ms);
    let mut checks = Vec::new();
    for (component, check) in components {
        let started = Instant::now();
        let task_state = state.clone();
        let forced = state
            .health
            .forced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&component)
            .cloned();
        let (status, error) = if let Some(reason) = forced {
            (Status::Failed, Some(reason))
        } else {
            // Checks only read shared state, but run them off the async
            // workers so a stuck lock cannot stall the HTTP server.
            let handle = tokio::task::spawn_blocking(move || check(&task_state));
            match tokio::time::timeout(timeout, handle).await {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(err)) => (Status::Failed, Some(format!("check panicked: {err}"))),
                Err(_) => (
                    Status::Failed,
                    Some(format!("check timed out after {} ms", timeout.as_millis())),
                ),
            }
        };
        let elapsed = started.elapsed();
        // A state set: 1 for the current state, 0 for the others.
        for s in Status::ALL {
            state
                .metrics
                .health_status
                .with_label_values(&[&component, s.label()])
                .set(f64::from(u8::from(s == status)));
        }
        state
            .metrics
            .health_duration
            .with_label_values(&[&component])
            .observe(elapsed.as_secs_f64());
        state
            .metrics
            .health_total
            .with_label_values(&[&component, status.label()])
            .inc();
        checks.push(CheckResult {
            component,
            status,
            latency_ms: elapsed.as_secs_f64() * 1e3,
            error,
        });
    }
    let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    Report { status, checks }
}

fn check_probes(state: &AppState) -> Verdict {
    let attachments = state.attachments();
    let failed: Vec<String> = attachments
        .iter()
        .filter(|a| !a.attached)
        .map(|a| {
            format!(
                "{} on {}: {}",
                a.program,
                a.hook,
                a.error.clone().unwrap_or_default()
            )
        })
        .collect();
    let required_failed = attachments.iter().any(|a| !a.attached && a.required);
    match (failed.is_empty(), required_failed) {
        (true, _) => (Status::Ok, None),
        (false, true) => (Status::Failed, Some(failed.join("; "))),
        (false, false) => (Status::Degraded, Some(failed.join("; "))),
    }
}

fn check_collector(state: &AppState) -> Verdict {
    if !state.collector.is_alive() {
        return (Status::Failed, Some("collector thread exited".into()));
    }
    let interval = Duration::from_millis(state.config_snapshot().collector.interval_ms);
    let snapshot = state.snapshot();
    match snapshot.taken_at {
        Some(at) if at.elapsed() <= interval * 3 + Duration::from_secs(1) => (Status::Ok, None),
        Some(at) => (
            Status::Failed,
            Some(format!(
                "last collection {:.1} s ago",
                at.elapsed().as_secs_f64()
            )),
        ),
        None => (Status::Failed, Some("no collection yet".into())),
    }
}

/// A ring reader is healthy when its thread runs and, if events are waiting,
/// it has drained recently.
fn check_ring(state: &AppState, label: &str) -> Verdict {
    let Some(ring) = state.events.ring(label) else {
        return (Status::Failed, Some("no reader".into()));
    };
    if state.reader_finished() {
        return (Status::Failed, Some("reader thread exited".into()));
    }
    let snapshot = state.snapshot();
    let kernel = snapshot.rings.get(label).copied().unwrap_or_default();
    let backlog = kernel
        .produced
        .saturating_sub(kernel.lost + kernel.received);
    let idle_ms = now_ms().saturating_sub(ring.last_drain_ms.load(Ordering::Relaxed));
    if backlog > 0 && idle_ms > 5_000 {
        return (
            Status::Failed,
            Some(format!(
                "{backlog} events waiting, last drained {idle_ms} ms ago"
            )),
        );
    }
    (Status::Ok, None)
}
