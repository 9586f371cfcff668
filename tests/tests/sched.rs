//! Run-queue latency: CPU-bound stress-ng workers outnumbering the CPUs
//! must wait for each other, so waits of a millisecond and more appear in
//! `sonde_runqueue_latency_seconds`, through either tier, and, by cgroup,
//! in `sonde_runqueue_cgroup_latency_seconds`; the part waited behind
//! another task, apart from waits for an idle CPU to wake, matches
//! bpftrace's split of the same waits.

use std::{process::Command, time::Duration};

use sonde_tests::{
    Agent, Config, Scrape, Workload,
    cgroup::TestCgroup,
    referee::{self, Bpftrace},
    require_root,
};

fn samples(s: &Scrape) -> f64 {
    s.value_or_zero("sonde_runqueue_latency_seconds_count", &[])
}

/// Waits longer than ~1 ms: all samples minus the bucket ending at 2^20 ns.
fn long_waits(s: &Scrape) -> f64 {
    samples(s)
        - s.value_or_zero(
            "sonde_runqueue_latency_seconds_bucket",
            &[("le", "0.001048576")],
        )
}

fn cpu_contention_shows_up(hook: &str) {
    let config = Config::new().set("runqueue", "hook", &format!("{hook:?}"));
    let agent = Agent::start(&config.render(), &[]);
    agent
        .metrics()
        .assert_attached_in_mode("sonde_runq_switch", hook);
    let before = agent.metrics();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = (cpus * 3).to_string();
    let status = Command::new("stress-ng")
        .args(["--cpu", &workers, "--timeout", "2s", "--quiet"])
        .status()
        .expect("running stress-ng (apt-get install stress-ng)");
    assert!(status.success(), "stress-ng failed");
    let after = agent
        .try_wait_for(Duration::from_secs(5), |s| {
            long_waits(s) > long_waits(&before)
        })
        .unwrap_or_else(|last| {
            panic!(
                "{workers} CPU-bound workers on {cpus} CPUs for 2 s: no run-queue wait over 1 ms \
                 recorded ({hook}):\n{}",
                last.grep("sonde_runqueue")
            )
        });
    let d_samples = samples(&after) - samples(&before);
    let d_long = long_waits(&after) - long_waits(&before);
    println!("{hook}: {d_samples} run-queue samples, {d_long} over 1 ms");
    assert!(d_samples >= d_long && d_long > 0.0);
}

#[test]
fn cpu_contention_shows_up_in_runqueue_latency() {
    if !require_root() {
        return;
    }
    cpu_contention_shows_up("raw_tracepoint");
}

#[test]
fn cpu_contention_shows_up_through_the_tracepoint_tier() {
    if !require_root() {
        return;
    }
    cpu_contention_shows_up("tracepoint");
}

/// Six CPU-bound workers in a cgroup of their own on two CPUs: that cgroup
/// appears in `sonde_runqueue_cgroup_latency_seconds` under its path, its
/// samples are part of the overall histogram's, and its summed wait is at
/// least the time the kernel's own pressure accounting (PSI) says a task of
/// it was waiting (several waiting at once add up, so it is more).
#[test]
fn a_contended_cgroup_is_named_with_its_waits() {
    if !require_root() {
        return;
    }
    let cgroup = TestCgroup::new("sonde-test-runq");
    let label = cgroup.label();
    let config = Config::new().set("runqueue", "top_cgroups", "5");
    let agent = Agent::start(&config.render(), &[]);
    let count = |s: &Scrape| {
        s.value_or_zero(
            "sonde_runqueue_cgroup_latency_seconds_count",
            &[("cgroup", &label)],
        )
    };
    let sum = |s: &Scrape| {
        s.value_or_zero(
            "sonde_runqueue_cgroup_latency_seconds_sum",
            &[("cgroup", &label)],
        )
    };
    let before = agent.metrics();
    let psi_before = sonde_tests::cgroup::cpu_pressure_some_us(cgroup.dir());
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = (cpus * 3).to_string();
    let started = std::time::Instant::now();
    let status = cgroup.run(
        "stress-ng",
        &["--cpu", &workers, "--timeout", "3s", "--quiet"],
    );
    let ran = started.elapsed().as_secs_f64();
    assert!(status.success(), "stress-ng in {label} failed");
    let psi_after = sonde_tests::cgroup::cpu_pressure_some_us(cgroup.dir());
    let after = agent
        .try_wait_for(Duration::from_secs(5), |s| count(s) > count(&before))
        .unwrap_or_else(|last| {
            panic!(
                "{workers} CPU-bound workers in cgroup {label} for 3 s: no waits under \
                 cgroup=\"{label}\":\n{}",
                last.grep("sonde_runqueue_cgroup")
            )
        });
    // One more cycle so both histograms hold the same switches.
    std::thread::sleep(Duration::from_millis(500));
    let after = {
        let later = agent.metrics();
        if count(&later) >= count(&after) {
            later
        } else {
            after
        }
    };
    let d_count = count(&after) - count(&before);
    let d_sum = sum(&after) - sum(&before);
    let d_all = samples(&after) - samples(&before);
    assert!(
        d_count <= d_all,
        "cgroup {label}: {d_count} waits, more than the {d_all} of the whole node"
    );
    // Its tasks cannot have waited longer than all of them for the whole
    // run (the parent and the workers).
    let most = (cpus * 3 + 1) as f64 * ran;
    assert!(
        d_sum <= most,
        "cgroup {label}: waits sum to {d_sum:.3} s, more than {most:.1} s ({workers} workers \
         and their parent waiting for the whole {ran:.1} s run)"
    );
    let top = after.series("sonde_runqueue_cgroup_latency_seconds_count", &[]);
    assert!(
        top.len() <= 5,
        "top_cgroups = 5 but {} cgroups exported:\n{}",
        top.len(),
        after.grep("sonde_runqueue_cgroup_latency_seconds_count")
    );
    let psi = match (psi_before, psi_after) {
        (Some(b), Some(a)) => Some((a - b) / 1e6),
        _ => None,
    };
    if let Some(psi) = psi {
        assert!(
            d_sum >= 0.9 * psi && psi > 0.0,
            "cgroup {label}: waits sum to {d_sum:.3} s; the kernel's PSI says a task of it \
             waited {psi:.3} s"
        );
    }
    println!(
        "cgroup {label}: {d_count} waits of the node's {d_all}, {d_sum:.3} s in all; \
         PSI cpu some: {psi:?} s"
    );
    drop(agent);
}

/// The same waits as the agent's raw tier, split the same way: a wait ends
/// with the CPU switching from the idle task (pid 0) or from another task.
const WAIT_SPLIT: &str = r#"
BEGIN { printf("ready\n"); }
tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @start[args->pid] = nsecs; }
tracepoint:sched:sched_switch {
    if (args->prev_pid != 0 && (args->prev_state & 0xff) == 0) { @start[args->prev_pid] = nsecs; }
    $s = @start[args->next_pid];
    if ($s > 0) {
        delete(@start[args->next_pid]);
        if (args->prev_pid == 0) { @idle_ns = sum(nsecs - $s); }
        else { @behind_ns = sum(nsecs - $s); }
    }
}
END { clear(@start); }
"#;

/// A task waiting for a CPU waits either behind another task (contention)
/// or for an idle CPU to wake; only the first is CPU saturation, and in a
/// VM the second grows whenever the host is slow to run an idle vCPU. A
/// sleep loop (2,000 sleeps of 1 ms, each woken on an idle CPU), then three
/// CPU hogs pinned to one CPU in a cgroup of their own for 2 s: Sonde's
/// `sonde_runqueue_wait_behind_task_seconds_total` and the rest of its
/// waits match bpftrace's split of the same switches (Sonde's window lies
/// inside bpftrace's), and the hogs' waits are behind tasks: at least the
/// time the kernel's PSI says one of them waited.
#[test]
fn waits_behind_tasks_are_told_from_waits_for_an_idle_cpu() {
    if !require_root() {
        return;
    }
    let agent = Agent::start(&Config::new().render(), &[]);
    let behind = |s: &Scrape| s.value_or_zero("sonde_runqueue_wait_behind_task_seconds_total", &[]);
    let waited = |s: &Scrape| s.value_or_zero("sonde_runqueue_latency_seconds_sum", &[]);
    let bt = Bpftrace::start(WAIT_SPLIT, "ready");
    // A reading collected after bpftrace attached (a cycle is 1 s).
    std::thread::sleep(Duration::from_millis(2_500));
    let before = agent.metrics();
    Workload::run(&["nanosleep", "1", "2000"], Duration::from_secs(60));
    let cgroup = TestCgroup::new("sonde-test-runq-behind");
    let psi_before = sonde_tests::cgroup::cpu_pressure_some_us(cgroup.dir());
    let status = cgroup.run(
        "stress-ng",
        &["--cpu", "3", "--taskset", "0", "--timeout", "2s", "--quiet"],
    );
    assert!(status.success(), "stress-ng failed");
    let psi = sonde_tests::cgroup::cpu_pressure_some_us(cgroup.dir())
        .zip(psi_before)
        .map(|(a, b)| (a - b) / 1e6);
    // Two cycles, so the reading holds every switch of the load.
    std::thread::sleep(Duration::from_millis(2_500));
    let after = agent.metrics();
    let out = bt.stop();
    let bt_behind = referee::scalar(&out, "@behind_ns") as f64 / 1e9;
    let bt_idle = referee::scalar(&out, "@idle_ns") as f64 / 1e9;
    let ours_behind = behind(&after) - behind(&before);
    let ours_idle = waited(&after) - waited(&before) - ours_behind;
    println!(
        "behind a task: Sonde {ours_behind:.4} s, bpftrace {bt_behind:.4} s; for an idle CPU: \
         Sonde {ours_idle:.4} s, bpftrace {bt_idle:.4} s; the hogs' PSI cpu some {psi:?} s"
    );
    // bpftrace watched longer (before and after Sonde's two readings).
    let slack = 0.001;
    assert!(
        ours_behind <= bt_behind * 1.02 + slack && ours_behind >= bt_behind * 0.9,
        "waits behind a task: Sonde {ours_behind:.4} s, bpftrace {bt_behind:.4} s"
    );
    assert!(
        ours_idle <= bt_idle * 1.02 + slack && ours_idle >= bt_idle * 0.5,
        "waits for an idle CPU: Sonde {ours_idle:.4} s, bpftrace {bt_idle:.4} s"
    );
    if let Some(psi) = psi {
        assert!(
            psi > 0.5 && ours_behind >= 0.9 * psi,
            "three hogs on one CPU for 2 s: PSI says one waited {psi:.3} s, Sonde counted \
             {ours_behind:.3} s of waits behind a task"
        );
    }
}
