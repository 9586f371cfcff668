//! Supervision of the agent's long-running tasks. Each task has a name, a
//! role (which health endpoint its loss turns red), a heartbeat it beats
//! every time round its loop, and a state. A task whose thread or future
//! ended, or whose heartbeat is older than its stall limit, is down; the
//! health checks name it (`task.NAME`) and `sonde_task_up{task}` is 0.
//! Threads run through [`run_restarting`]: a panic restarts their loop in
//! place, at most [`RESTART_BUDGET`] times in [`RESTART_WINDOW`]; beyond
//! that the task gives up and the agent exits with [`EXIT_GAVE_UP`] so its
//! orchestrator restarts it. With `debug.fault_injection` a task can be
//! made to panic or stall at its next heartbeat.

use std::{
    collections::{BTreeMap, VecDeque},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::proto::{MetricFamily, MetricType};

use crate::{family::Family, time::now_ms};

/// At most this many restarts of one task within [`RESTART_WINDOW`].
pub const RESTART_BUDGET: usize = 3;
/// See [`RESTART_BUDGET`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// The agent's exit code when a task exceeded its restart budget.
pub const EXIT_GAVE_UP: u8 = 3;

/// Which health endpoint a task's loss turns red.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent is useless without it: liveness fails (restart me).
    Liveness,
    /// Part of what the agent was configured to deliver: readiness fails.
    Readiness,
    /// Optional: readiness says `degraded` (still HTTP 200).
    Degraded,
}

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Ended while the agent was not shutting down.
    Exited(String),
    /// Panicked more often than its budget allows.
    GaveUp(String),
}

/// One supervised task.
#[derive(Debug)]
pub struct Task {
    pub name: &'static str,
    pub role: Role,
    /// A heartbeat older than this is a stall.
    stall_after: Duration,
    beat_ms: AtomicU64,
    phase: Mutex<Phase>,
    restarts: AtomicU64,
    recent_restarts: Mutex<VecDeque<Instant>>,
    inject_panic: AtomicBool,
    inject_stall: AtomicBool,
}

impl Task {
    fn new(name: &'static str, role: Role, stall_after: Duration) -> Self {
        Self {
            name,
            role,
            stall_after,
            beat_ms: AtomicU64::new(now_ms()),
            phase: Mutex::new(Phase::Running),
            restarts: AtomicU64::new(0),
            recent_restarts: Mutex::default(),
            inject_panic: AtomicBool::new(false),
            inject_stall: AtomicBool::new(false),
        }
    }

    /// Records that the task came round its loop. With fault injection it
    /// panics here, or blocks the calling thread while stalled.
    pub fn beat(&self) {
        self.injected_panic();
        while self.inject_stall.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// [`Task::beat`] for async tasks: a stall awaits instead of blocking
    /// a worker thread.
    pub async fn beat_async(&self) {
        self.injected_panic();
        while self.inject_stall.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn injected_panic(&self) {
        if self.inject_panic.swap(false, Ordering::Relaxed) {
            panic!("fault injection: panic in task {}", self.name);
        }
    }

    /// Fault injection: panic at the next heartbeat.
    pub fn inject_panic(&self) {
        self.inject_panic.store(true, Ordering::Relaxed);
    }

    /// Fault injection: stall at the next heartbeat until cleared.
    pub fn inject_stall(&self, stalled: bool) {
        self.inject_stall.store(stalled, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Why the task is down, or None while it runs and beats.
    pub fn problem(&self) -> Option<String> {
        match self.phase() {
            Phase::Running => {}
            Phase::Exited(why) => return Some(format!("exited: {why}")),
            Phase::GaveUp(why) => return Some(format!("gave up: {why}")),
        }
        let idle = now_ms().saturating_sub(self.beat_ms.load(Ordering::Relaxed));
        (u128::from(idle) > self.stall_after.as_millis())
            .then(|| format!("stalled: no heartbeat for {:.1} s", idle as f64 / 1e3))
    }

    /// Counts a restart; false when the budget is spent.
    fn may_restart(&self) -> bool {
        let now = Instant::now();
        let mut recent = self
            .recent_restarts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        recent.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
        if recent.len() >= RESTART_BUDGET {
            return false;
        }
        recent.push_back(now);
        self.restarts.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Every supervised task, and the first one that gave up.
#[derive(Debug)]
pub struct Tasks {
    tasks: Mutex<BTreeMap<&'static str, Arc<Task>>>,
    shutting_down: AtomicBool,
    gave_up: tokio::sync::watch::Sender<Option<String>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self {
            tasks: Mutex::default(),
            shutting_down: AtomicBool::new(false),
            gave_up: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl Tasks {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Registers a task (replacing one of the same name).
    pub fn register(&self, name: &'static str, role: Role, stall_after: Duration) -> Arc<Task> {
        let task = Arc::new(Task::new(name, role, stall_after));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, task.clone());
        task
    }

    pub fn get(&self, name: &str) -> Option<Arc<Task>> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Task>> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// From now on, tasks that end are not reported.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    fn ended(&self, task: &Task, why: String) {
        if !self.shutting_down.load(Ordering::Relaxed) {
            tracing::error!(task = task.name, "task ended: {why}");
            task.set_phase(Phase::Exited(why));
        }
    }

    fn give_up(&self, task: &Task, why: String) {
        tracing::error!(
            task = task.name,
            "task panicked {} times within {} s: giving up ({why}); the agent exits with code {EXIT_GAVE_UP}",
            RESTART_BUDGET + 1,
            RESTART_WINDOW.as_secs()
        );
        task.set_phase(Phase::GaveUp(why));
        self.gave_up.send_replace(Some(task.name.to_owned()));
    }

    /// Resolves with the name of the first task that gave up.
    pub async fn wait_gave_up(&self) -> String {
        let mut rx = self.gave_up.subscribe();
        loop {
            if let Some(name) = rx.borrow_and_update().clone() {
                return name;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `body` (a thread's loop) until it returns; a panic restarts
    /// it within the budget, then the task gives up.
    pub fn run_restarting(&self, task: &Task, mut body: impl FnMut()) {
        loop {
            match catch_unwind(AssertUnwindSafe(&mut body)) {
                Ok(()) => {
                    self.ended(task, "returned".into());
                    return;
                }
                Err(payload) => {
                    let why = panic_message(payload.as_ref());
                    if self.shutting_down.load(Ordering::Relaxed) {
                        return;
                    }
                    if !task.may_restart() {
                        self.give_up(task, why);
                        return;
                    }
                    tracing::warn!(
                        task = task.name,
                        restarts = task.restarts(),
                        "task panicked ({why}): restarting it"
                    );
                    task.beat_ms.store(now_ms(), Ordering::Relaxed);
                }
            }
        }
    }

    /// Runs an async task, recording how it ended (a panic or an early
    /// return before shutdown is reported; async tasks are not restarted).
    pub async fn run_async(self: Arc<Self>, task: Arc<Task>, body: impl Future<Output = ()>) {
        struct Ended(Arc<Tasks>, Arc<Task>, bool);
        impl Drop for Ended {
            fn drop(&mut self) {
                let why = if self.2 {
                    "returned"
                } else {
                    "panicked or was cancelled"
                };
                self.0.ended(&self.1, why.into());
            }
        }
        let mut ended = Ended(self, task, false);
        body.await;
        ended.2 = true;
    }

    /// `sonde_task_up{task}` and `sonde_task_restarts_total{task}`.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut up = Family::new(
            "sonde_task_up",
            "1 while the supervised task runs and beats its heartbeat, 0 when it ended, stalled or gave up",
            MetricType::GAUGE,
        );
        let mut restarts = Family::new(
            "sonde_task_restarts_total",
            "Restarts of the supervised task after a panic (at most 3 in 10 minutes, then the agent exits with code 3)",
            MetricType::COUNTER,
        );
        let mut out = Vec::new();
        for task in self.all() {
            up.sample(
                &[("task", task.name)],
                f64::from(u8::from(task.problem().is_none())),
            );
            restarts.sample(&[("task", task.name)], task.restarts() as f64);
        }
        up.done(&mut out);
        restarts.done(&mut out);
        out
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_restart_within_the_budget_then_give_up() {
        let tasks = Tasks::new();
        let task = tasks.register("t", Role::Liveness, Duration::from_secs(60));
        let mut runs = 0;
        tasks.run_restarting(&task, || {
            runs += 1;
            panic!("boom {runs}");
        });
        assert_eq!(runs, RESTART_BUDGET + 1);
        assert_eq!(task.restarts(), RESTART_BUDGET as u64);
        assert!(matches!(task.phase(), Phase::GaveUp(ref w) if w.contains("boom 4")));
        assert_eq!(tasks.gave_up.borrow().as_deref(), Some("t"));
    }

    #[test]
    fn a_panic_then_a_clean_return_counts_one_restart() {
        let tasks = Tasks::new();
        let task = tasks.register("t", Role::Liveness, Duration::from_secs(60));
        let mut runs = 0;
        tasks.run_restarting(&task, || {
            runs += 1;
            task.beat();
            if runs == 1 {
                task.inject_panic();
                task.beat();
            }
        });
        assert_eq!(runs, 2);
        assert_eq!(task.restarts(), 1);
        assert!(task.problem().is_some_and(|p| p.contains("exited")));
    }

    #[test]
    fn a_stale_heartbeat_is_a_stall() {
        let tasks = Tasks::new();
        let task = tasks.register("t", Role::Degraded, Duration::from_millis(20));
        assert_eq!(task.problem(), None);
        std::thread::sleep(Duration::from_millis(40));
        assert!(task.problem().is_some_and(|p| p.starts_with("stalled")));
        task.beat();
        assert_eq!(task.problem(), None);
    }

    #[test]
    fn ends_after_shutdown_are_not_problems() {
        let tasks = Tasks::new();
        let task = tasks.register("t", Role::Readiness, Duration::from_secs(60));
        tasks.shutting_down();
        tasks.run_restarting(&task, || {});
        assert_eq!(task.problem(), None);
    }
}
