//! Health endpoints: startup, readiness with per-component checks, a
//! component failure injected and recovered, aliases, and the status API.

use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::agent::{STARTUP_TIMEOUT, parse_json};
use sonde_tests::{Agent, Config, require_root};

/// `GET /health/ready` → (status, JSON body).
fn ready(agent: &Agent) -> (u16, Value) {
    let (status, body) = agent.get("/health/ready");
    (status, parse_json("/health/ready", &body))
}

fn check_shape(v: &Value) -> &Vec<Value> {
    let checks = v["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("/health/ready has no checks array: {v}"));
    assert!(
        !checks.is_empty(),
        "/health/ready has an empty checks array: {v}"
    );
    for c in checks {
        assert!(
            c["component"].as_str().is_some_and(|s| !s.is_empty()),
            "a check without a component name: {c}"
        );
        assert!(
            c["status"].as_str().is_some(),
            "check without a status string: {c}"
        );
        assert!(
            c["latency_ms"].is_number(),
            "check without a numeric latency_ms: {c}"
        );
    }
    checks
}

/// Polls `/health/ready` until it answers `want` or 5 s pass.
fn ready_until(agent: &Agent, want: u16) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v) = ready(agent);
        if status == want || Instant::now() >= deadline {
            return (status, v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn startup_then_ready_with_component_checks() {
    if !require_root() {
        return;
    }
    let agent = Agent::spawn(&Config::new().render(), &[]);
    // Record what /health/startup says from spawn until it answers 200.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let answer = match agent.try_request("GET", "/health/startup") {
            Ok(r) => r.status.to_string(),
            Err(_) => "no-connection".to_string(),
        };
        if seen.last() != Some(&answer) {
            seen.push(answer.clone());
        }
        if answer == "200" || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("200"),
        "/health/startup never answered 200 within {STARTUP_TIMEOUT:?}; answers: {seen:?}; \
         log:\n{}",
        agent.log()
    );
    assert!(
        seen.iter()
            .all(|a| a == "no-connection" || a == "503" || a == "200"),
        "/health/startup answered something other than 503 or 200 while starting: {seen:?}"
    );
    println!("/health/startup answers from spawn on: {seen:?}");

    let (status, v) = ready(&agent);
    assert_eq!(status, 200, "/health/ready answered {status}: {v}");
    assert_eq!(v["status"], "ok", "/health/ready status is not ok: {v}");
    check_shape(&v);

    for path in [
        "/health/live",
        "/health",
        "/liveness",
        "/readiness",
        "/health/startup",
    ] {
        let (status, body) = agent.get(path);
        assert_eq!(status, 200, "GET {path} answered {status}: {body}");
    }
}

#[test]
fn injected_collector_failure_turns_ready_red_then_recovers() {
    if !require_root() {
        return;
    }
    let config = Config::new().set("debug", "fault_injection", "true");
    let agent = Agent::start(&config.render(), &[]);
    let (status, v) = ready(&agent);
    assert_eq!(status, 200, "/health/ready before the fault: {status} {v}");

    let (status, body) = agent.post("/debug/fail?component=collector");
    assert!(
        (200..300).contains(&status),
        "POST /debug/fail?component=collector answered {status}: {body}"
    );
    let (status, v) = ready_until(&agent, 503);
    assert_eq!(
        status, 503,
        "/health/ready with the collector failed: {status} {v}"
    );
    assert_eq!(
        v["status"], "failed",
        "/health/ready status with the collector failed: {v}"
    );
    let checks = check_shape(&v);
    let collector = checks
        .iter()
        .find(|c| c["component"] == "collector")
        .unwrap_or_else(|| panic!("no check for component collector: {v}"));
    assert_eq!(
        collector["status"], "failed",
        "collector check: {collector}"
    );
    assert!(
        collector["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the failed collector check carries no error message: {collector}"
    );
    // A state set: the collector's current state is the one series at 1,
    // the other two at 0 (None while that is not so).
    let collector_state = |s: &sonde_tests::Scrape| {
        let values: Vec<(&str, Option<f64>)> = ["ok", "degraded", "failed"]
            .into_iter()
            .map(|state| {
                let labels = [("component", "collector"), ("state", state)];
                (state, s.value("sonde_health_check_status", &labels))
            })
            .collect();
        let on: Vec<&str> = values
            .iter()
            .filter(|(_, v)| *v == Some(1.0))
            .map(|(state, _)| *state)
            .collect();
        let off = values.iter().filter(|(_, v)| *v == Some(0.0)).count();
        (on.len() == 1 && off == 2).then(|| on[0])
    };
    agent
        .try_wait_for(Duration::from_secs(5), |s| {
            collector_state(s) == Some("failed")
        })
        .unwrap_or_else(|s| {
            panic!(
                "sonde_health_check_status{{component=\"collector\"}} did not move to \
                 state=\"failed\" (1 for failed, 0 for ok and degraded):\n{}",
                s.grep("sonde_health_check_status")
            )
        });
    // Liveness is not readiness: the process is alive.
    let (status, body) = agent.get("/health/live");
    assert_eq!(
        status, 200,
        "/health/live with a failed component: {status} {body}"
    );

    let (status, body) = agent.post("/debug/recover?component=collector");
    assert!(
        (200..300).contains(&status),
        "POST /debug/recover?component=collector answered {status}: {body}"
    );
    let (status, v) = ready_until(&agent, 200);
    assert_eq!(status, 200, "/health/ready after recovery: {status} {v}");
    assert_eq!(v["status"], "ok", "/health/ready after recovery: {v}");
    agent
        .try_wait_for(Duration::from_secs(5), |s| collector_state(s) == Some("ok"))
        .unwrap_or_else(|s| {
            panic!(
                "sonde_health_check_status{{component=\"collector\"}} did not return to \
                 state=\"ok\":\n{}",
                s.grep("sonde_health_check_status")
            )
        });
}

#[test]
fn debug_endpoints_are_off_without_fault_injection() {
    if !require_root() {
        return;
    }
    let agent = Agent::start(&Config::new().render(), &[]);
    let (status, body) = agent.post("/debug/fail?component=collector");
    assert!(
        (400..500).contains(&status),
        "POST /debug/fail with fault_injection = false answered {status} (expected 4xx): {body}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (status, v) = ready(&agent);
    assert_eq!(
        status, 200,
        "/health/ready after a refused /debug/fail: {status} {v}"
    );
}

#[test]
fn status_api_reports_version_kernel_and_programs() {
    if !require_root() {
        return;
    }
    let agent = Agent::start(&Config::new().render(), &[]);
    let v = agent.status_json();
    assert_eq!(
        v["version"],
        env!("CARGO_PKG_VERSION"),
        "/api/v1/status version: {v:#}"
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease");
    assert_eq!(
        v["kernel_release"],
        release.trim(),
        "/api/v1/status kernel_release: {v:#}"
    );
    let programs = v["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/v1/status has no programs array: {v:#}"));
    assert!(
        !programs.is_empty(),
        "/api/v1/status lists no programs while syscall tracing is on: {v:#}"
    );
    for p in programs {
        assert!(
            p["program"].is_string() && p["hook"].is_string() && p["attached"].is_boolean(),
            "program entry without program/hook/attached: {p}"
        );
    }
    assert!(
        programs.iter().any(|p| p["attached"] == true),
        "no program is attached: {v:#}"
    );
}
