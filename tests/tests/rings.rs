//! Ring-buffer events: slow-syscall events reach `/api/v1/events` with the
//! right process and latency, and losses are accounted for exactly
//! (received + lost == produced) when the reader stalls; on BPF ring buffers
//! and on perf event arrays (the transport of kernels before 5.8).

use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::agent::parse_json;
use sonde_tests::{Agent, Config, Scrape, Workload, require_root};

#[test]
fn slow_syscall_event_names_the_process_and_latency() {
    slow_syscall_event(Config::new());
}

#[test]
fn slow_syscall_event_through_perf_event_arrays() {
    slow_syscall_event(Config::new().set("events", "transport", PERF));
}

const PERF: &str = "\"perf_event_array\"";

fn slow_syscall_event(config: Config) {
    if !require_root() {
        return;
    }
    let config =
        config
            .set("syscalls", "slow_threshold_ms", "20")
            .set("syscalls", "slow_ignore", "[]");
    let agent = Agent::start(&config.render(), &[]);

    let (pid, _) = Workload::run(&["nanosleep", "50", "3"], Duration::from_secs(10));

    let deadline = Instant::now() + Duration::from_secs(5);
    let (mine, body) = loop {
        let (status, body) = agent.get("/api/v1/events");
        assert_eq!(status, 200, "GET /api/v1/events answered {status}: {body}");
        let v = parse_json("/api/v1/events", &body);
        let events = v["events"]
            .as_array()
            .unwrap_or_else(|| panic!("/api/v1/events has no \"events\" array: {body}"))
            .clone();
        let mine: Vec<Value> = events
            .into_iter()
            .filter(|e| e["kind"] == "slow_syscall" && e["pid"].as_u64() == Some(pid as u64))
            .collect();
        if !mine.is_empty() || Instant::now() >= deadline {
            break (mine, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !mine.is_empty(),
        "no slow_syscall event for pid {pid} (3 nanosleeps of 50 ms, threshold 20 ms) within 5 s; \
         /api/v1/events: {body}"
    );
    let good = mine.iter().find(|e| {
        let name = e["syscall"].as_str().unwrap_or_default();
        (name == "nanosleep" || name == "clock_nanosleep")
            && e["latency_ns"].as_f64().unwrap_or(0.0) >= 50e6
    });
    assert!(
        good.is_some(),
        "pid {pid}'s slow_syscall events do not include a nanosleep/clock_nanosleep of at \
         least 50 ms: {mine:#?}"
    );
}

fn ring(s: &Scrape, name: &str) -> f64 {
    s.value_or_zero(name, &[("ring", "syscall")])
}

#[test]
fn stalled_reader_losses_are_accounted_exactly() {
    stalled_reader_losses("ring_buffer");
}

/// One page per CPU for the perf buffers (4 KiB shared among the CPUs,
/// rounded up to a page each).
#[test]
fn stalled_reader_losses_are_accounted_exactly_on_perf_event_arrays() {
    stalled_reader_losses("perf_event_array");
}

fn stalled_reader_losses(transport: &str) {
    if !require_root() {
        return;
    }
    let config = |threshold_ms: &str| {
        Config::new()
            .set("events", "transport", &format!("\"{transport}\""))
            .set("events", "syscall_ring_bytes", "4096")
            .set("syscalls", "slow_threshold_ms", threshold_ms)
            .set("syscalls", "slow_ignore", "[]")
            .set("debug", "fault_injection", "true")
            .render()
    };
    let agent = Agent::start(&config("1"), &[]);

    let (status, body) = agent.post("/debug/stall-reader?ring=syscall&ms=3000");
    assert!(
        (200..300).contains(&status),
        "POST /debug/stall-reader?ring=syscall&ms=3000 answered {status}: {body}"
    );
    let stalled_at = Instant::now();
    // ~400 slow syscalls of 2 ms while nobody reads the 4 KiB ring, which
    // holds a few dozen events at most.
    Workload::run(&["nanosleep", "2", "400"], Duration::from_secs(30));

    // Stop producing: threshold 0 disables slow-syscall events, reloaded
    // on SIGHUP.
    agent.rewrite_config(&config("0"));
    agent.sighup();
    // The harness starts the agent with --listen: a reload re-reads the
    // file under the same flags, so it names nothing that needs a restart.
    let log = agent.wait_log("SIGHUP: runtime settings reloaded");
    assert!(
        !log.contains("only take effect after a restart"),
        "a reload that changed only a runtime setting asked for a restart:\n{log}"
    );
    // Past the stall, with time for the reader to drain the ring.
    let wait = Duration::from_secs(4).saturating_sub(stalled_at.elapsed());
    std::thread::sleep(wait.max(Duration::from_secs(1)) + Duration::from_secs(1));

    let s = agent.wait_stable(
        "syscall ring counters (received, lost, produced) after the stall \
         (if produced keeps rising, the SIGHUP reload of slow_threshold_ms = 0 did not apply)",
        Duration::from_secs(10),
        Duration::from_millis(500),
        |s| {
            (
                ring(s, "sonde_events_total"),
                ring(s, "sonde_events_lost_total"),
                ring(s, "sonde_events_produced_total"),
            )
        },
    );
    let received = ring(&s, "sonde_events_total");
    let lost = ring(&s, "sonde_events_lost_total");
    let produced = ring(&s, "sonde_events_produced_total");
    let lines = s.grep("ring=\"syscall\"");
    assert!(
        lost > 0.0,
        "sonde_events_lost_total{{ring=\"syscall\"}} is {lost} after ~400 slow syscalls into a \
         4 KiB ring whose reader was stalled:\n{lines}"
    );
    assert!(
        received > 0.0,
        "sonde_events_total{{ring=\"syscall\"}} is {received}: the reader received nothing \
         after the stall:\n{lines}"
    );
    assert_eq!(
        received + lost,
        produced,
        "received ({received}) + lost ({lost}) != produced ({produced}) for the syscall ring:\n{lines}"
    );
    println!(
        "syscall ring ({transport}) after the stall: received {received}, lost {lost}, produced {produced}"
    );

    // The SIGHUP reload of slow_threshold_ms = 0 is in force: more slow
    // sleeps produce no event.
    Workload::run(&["nanosleep", "5", "20"], Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let later = agent.metrics();
    let produced_later = ring(&later, "sonde_events_produced_total");
    assert_eq!(
        produced_later, produced,
        "sonde_events_produced_total{{ring=\"syscall\"}} rose from {produced} to \
         {produced_later} during 20 sleeps of 5 ms after slow_threshold_ms = 0 was reloaded with \
         SIGHUP: the reload did not take effect"
    );
}
