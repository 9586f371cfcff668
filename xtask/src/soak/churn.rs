//! The churn a node sees all day, in a background thread, once a second
//! and bounded: a veth pair created and the previous one deleted (in a
//! network namespace of the soak's own, so nothing else on the host
//! notices), a few short-lived processes, and a cgroup created, run in
//! and removed.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use sonde_tests::{NetNs, cgroup::TestCgroup, sys::output};

/// The soak's own namespace for veth churn, and its names' prefix.
pub const CHURN_NS: &str = "sk-ns0";
/// Short-lived processes started each second.
const PROCS_PER_TICK: usize = 4;

/// What the churn did, for the summary.
#[derive(Debug, Default)]
pub struct Counts {
    pub veth_created: AtomicU64,
    pub veth_deleted: AtomicU64,
    pub processes: AtomicU64,
    pub cgroups: AtomicU64,
    pub errors: AtomicU64,
}

/// The churn thread; stopped (and its namespace removed) on drop.
pub struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub counts: Arc<Counts>,
    _ns: NetNs,
}

impl Churn {
    pub fn start() -> anyhow::Result<Churn> {
        let ns = NetNs::try_new(CHURN_NS)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || churn(&stop, &counts))
        };
        Ok(Churn {
            stop,
            thread: Some(thread),
            counts,
            _ns: ns,
        })
    }

    /// One line for the summary.
    pub fn describe(&self) -> String {
        let c = &self.counts;
        format!(
            "{} veth pairs created and {} deleted, {} short-lived processes, {} cgroups, {} churn errors",
            c.veth_created.load(Ordering::Relaxed),
            c.veth_deleted.load(Ordering::Relaxed),
            c.processes.load(Ordering::Relaxed),
            c.cgroups.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The namespace goes with its interfaces (NetNs's drop).
    }
}

fn ip(args: &[&str]) -> bool {
    output(Command::new("ip").args(["-n", CHURN_NS]).args(args)).is_ok()
}

fn churn(stop: &AtomicBool, counts: &Counts) {
    let count = |c: &AtomicU64, ok: bool| {
        if ok {
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut tick: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        // At most two pairs exist: this tick's and the previous one.
        let (new, old) = (tick % 2, (tick + 1) % 2);
        let (a, b) = (format!("skv{new}"), format!("skw{new}"));
        let made = ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
            && ip(&["link", "set", &a, "up"])
            && ip(&["link", "set", &b, "up"]);
        count(&counts.veth_created, made);
        if tick > 0 {
            count(
                &counts.veth_deleted,
                ip(&["link", "del", &format!("skv{old}")]),
            );
        }
        for _ in 0..PROCS_PER_TICK {
            count(
                &counts.processes,
                Command::new("true").status().is_ok_and(|s| s.success()),
            );
        }
        let cg = TestCgroup::named(&format!("sk-soak-{}", tick % 3)).map(|cg| {
            cg.command("true", &[] as &[&str])
                .status()
                .is_ok_and(|s| s.success())
        });
        count(&counts.cgroups, matches!(cg, Ok(true)));
        tick += 1;
        if let Some(rest) = Duration::from_secs(1).checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let _ = ip(&["link", "del", &format!("skv{}", (tick + 1) % 2)]);
}
