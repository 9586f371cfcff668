//! Run-queue latency: CPU-bound stress-ng workers outnumbering the CPUs
//! must wait for each other, so waits of a millisecond and more appear in
//! `sonde_runqueue_latency_seconds`, through either tier.

use std::{process::Command, time::Duration};

use sonde_tests::{Agent, Config, Scrape, require_root};

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
    let scrape = agent.metrics();
    assert!(
        scrape
            .series("sonde_probe_attached", &[("mode", hook)])
            .iter()
            .any(|s| s
                .label("program")
                .is_some_and(|p| p.starts_with("sonde_runq_switch"))),
        "run-queue tier {hook} not attached:\n{}",
        scrape.grep("sonde_probe_attached")
    );
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
