//! Supervision: the systemd notification protocol spoken to a socket the
//! test binds (PID 1 here is not systemd, so this socket is the real peer):
//! `READY=1` only once `/health/startup` answers 200, `WATCHDOG=1` every
//! half of `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM. And the supervised
//! tasks, broken through `POST /debug/task` (fault injection): a panicking
//! collector is restarted with its counter and counts keep flowing, the
//! fourth panic makes the agent exit with code 3; a stalled or dead MAPE-K
//! loop or OTLP exporter fails readiness under its own name.

use std::{
    os::unix::net::UnixDatagram,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sonde_tests::{
    Agent, Config,
    agent::{STARTUP_TIMEOUT, STOP_TIMEOUT},
    require_root,
    sys::TempDir,
};

/// Every datagram the agent sent, with when it arrived.
type Received = Arc<Mutex<Vec<(Instant, String)>>>;

/// Reads datagrams until `done` is set.
fn listen(socket: UnixDatagram, done: Arc<AtomicBool>, ready: Arc<AtomicBool>) -> Received {
    let received: Received = Arc::default();
    let out = received.clone();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !done.load(Ordering::Relaxed) {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.lines().any(|l| l == "READY=1") {
                    ready.store(true, Ordering::SeqCst);
                }
                out.lock().unwrap().push((Instant::now(), text));
            }
        }
    });
    received
}

fn with_line(received: &Received, line: &str) -> Vec<(Instant, String)> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == line))
        .cloned()
        .collect()
}

#[test]
fn notify_ready_after_attach_watchdog_and_stopping() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let done = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let received = listen(socket, done.clone(), ready.clone());
    let path_s = path.display().to_string();
    // WATCHDOG_USEC = 2 s: a ping every second.
    let mut agent = Agent::spawn_with_env(
        &Config::new().render(),
        &[],
        &[("NOTIFY_SOCKET", &path_s), ("WATCHDOG_USEC", "2000000")],
    );

    // Until startup answers 200, READY=1 must not have arrived: read the
    // flag before each request, so a READY that raced the answer counts
    // for the answer after it.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut not_started = 0;
    loop {
        let ready_before = ready.load(Ordering::SeqCst);
        match agent.try_request("GET", "/health/startup") {
            Ok(r) if r.status == 200 => break,
            _ => {
                not_started += 1;
                assert!(
                    !ready_before,
                    "READY=1 arrived while /health/startup did not answer 200; log:\n{}",
                    agent.log()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "never started; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    // READY=1 comes right after; by then startup is 200 (asked above).
    while !ready.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no READY=1 within 10 s of startup; got {:?}; log:\n{}",
            received.lock().unwrap(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let readies = with_line(&received, "READY=1");
    assert_eq!(readies.len(), 1, "one READY=1: {readies:?}");
    assert!(
        readies[0]
            .1
            .lines()
            .any(|l| l.starts_with("STATUS=ready: ")),
        "READY=1 carries a STATUS line: {:?}",
        readies[0].1
    );
    assert_eq!(agent.get("/health/startup").0, 200, "startup after READY=1");
    println!(
        "{not_started} startup polls answered not-200 before READY=1; ready message {:?}",
        readies[0].1
    );

    // Watchdog: every second for 5.5 s (at least 4 pings, none more than
    // 1.8 s apart).
    let watch_from = Instant::now();
    std::thread::sleep(Duration::from_millis(5500));
    let pings: Vec<Instant> = with_line(&received, "WATCHDOG=1")
        .into_iter()
        .map(|(at, _)| at)
        .filter(|at| *at >= watch_from)
        .collect();
    let gaps: Vec<f64> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!("{} WATCHDOG=1 in 5.5 s, gaps {gaps:.2?} s", pings.len());
    assert!(
        pings.len() >= 4,
        "WATCHDOG=1 every second expected: {} in 5.5 s",
        pings.len()
    );
    assert!(
        gaps.iter().all(|g| *g < 1.8),
        "WATCHDOG=1 gaps under 1.8 s (half of WATCHDOG_USEC plus slack): {gaps:?}"
    );

    let sent = Instant::now();
    let (status, took) = agent.terminate(STOP_TIMEOUT).expect("exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::Relaxed);
    let stopping = with_line(&received, "STOPPING=1");
    assert_eq!(stopping.len(), 1, "one STOPPING=1: {stopping:?}");
    assert!(stopping[0].0 >= sent, "STOPPING=1 came after SIGTERM");
    println!(
        "STOPPING=1 {} ms after SIGTERM; exit after {} ms",
        (stopping[0].0 - sent).as_millis(),
        took.as_millis()
    );
}

/// `POST /debug/task?task=TASK&fault=FAULT`.
fn inject(agent: &Agent, task: &str, fault: &str) {
    let (status, body) = agent.post(&format!("/debug/task?task={task}&fault={fault}"));
    assert_eq!(status, 200, "inject {fault} into {task}: {body}");
}

fn restarts(s: &sonde_tests::Scrape, task: &str) -> f64 {
    s.value_or_zero("sonde_task_restarts_total", &[("task", task)])
}

fn syscalls(s: &sonde_tests::Scrape) -> f64 {
    s.sum("sonde_syscalls_total", &[])
}

#[test]
fn a_panicking_collector_restarts_then_the_agent_gives_up_with_code_3() {
    if !require_root() {
        return;
    }
    let config = Config::new().set("debug", "fault_injection", "true");
    let mut agent = Agent::start(&config.render(), &[]);
    let s = agent.wait_for("the collector task up", Duration::from_secs(10), |s| {
        s.value("sonde_task_up", &[("task", "collector")]) == Some(1.0)
    });
    assert_eq!(restarts(&s, "collector"), 0.0);
    for n in 1..=3 {
        inject(&agent, "collector", "panic");
        let s = agent.wait_for(
            &format!("collector restart {n}"),
            Duration::from_secs(10),
            |s| restarts(s, "collector") >= f64::from(n),
        );
        assert_eq!(
            restarts(&s, "collector"),
            f64::from(n),
            "one restart per panic"
        );
        // Counts still flow: the machine's syscalls keep being collected.
        let before = syscalls(&s);
        let after = agent.wait_for(
            "syscall counts rising after the restart",
            Duration::from_secs(5),
            |s| syscalls(s) > before,
        );
        assert_eq!(
            after.value("sonde_task_up", &[("task", "collector")]),
            Some(1.0)
        );
        assert_eq!(agent.get("/health/live").0, 200, "live after restart {n}");
        println!(
            "restart {n}: sonde_task_restarts_total{{task=\"collector\"}} = {}, syscalls {before} -> {}",
            restarts(&after, "collector"),
            syscalls(&after)
        );
    }
    // The fourth panic within ten minutes exceeds the budget.
    let sent = Instant::now();
    inject(&agent, "collector", "panic");
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running after the 4th panic; log:\n{}", agent.log()));
    assert_eq!(
        status.code(),
        Some(3),
        "exit code after the budget; log:\n{}",
        agent.log_tail(20)
    );
    assert!(agent.log().contains("giving up"), "log says it gave up");
    println!(
        "4th panic: exit code 3 after {} ms",
        sent.elapsed().as_millis()
    );
}

/// Polls `/health/ready` until `pred(status, body)` or 20 s.
fn ready_until(
    agent: &Agent,
    what: &str,
    pred: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = agent.get("/health/ready");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if pred(status, &v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last /health/ready {status} {body}; log:\n{}",
            agent.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check<'a>(v: &'a serde_json::Value, component: &str) -> Option<&'a serde_json::Value> {
    v["checks"]
        .as_array()?
        .iter()
        .find(|c| c["component"] == component)
}

#[test]
fn a_stalled_or_dead_mapek_loop_or_otlp_exporter_fails_readiness_by_name() {
    if !require_root() {
        return;
    }
    let config = Config::new()
        .set("debug", "fault_injection", "true")
        .set("otlp", "endpoint", "\"http://127.0.0.1:1\"")
        .set("otlp", "interval_ms", "500")
        .set("otlp", "timeout_ms", "500");
    let agent = Agent::start(&config.render(), &[]);
    ready_until(&agent, "ready with both tasks ok", |st, v| {
        st == 200
            && ["task.mapek", "task.otlp"]
                .iter()
                .all(|c| check(v, c).is_some_and(|c| c["status"] == "ok"))
    });
    for task in ["mapek", "otlp"] {
        let component = format!("task.{task}");
        let t0 = Instant::now();
        inject(&agent, task, "stall");
        let v = ready_until(&agent, &format!("{task} stalled"), |st, v| {
            st == 503 && check(v, &component).is_some_and(|c| c["status"] == "failed")
        });
        let c = check(&v, &component).unwrap();
        assert!(
            c["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("stalled")),
            "{c}"
        );
        let s = agent.wait_for(
            &format!("sonde_task_up{{{task}}} = 0"),
            Duration::from_secs(5),
            |s| s.value("sonde_task_up", &[("task", task)]) == Some(0.0),
        );
        assert_eq!(
            s.value("sonde_task_up", &[("task", "collector")]),
            Some(1.0)
        );
        assert_eq!(agent.get("/health/live").0, 200, "liveness stays green");
        println!(
            "{task} stalled: readiness 503 after {} ms: {c}",
            t0.elapsed().as_millis()
        );
        inject(&agent, task, "resume");
        ready_until(&agent, &format!("{task} resumed"), |st, v| {
            st == 200 && check(v, &component).is_some_and(|c| c["status"] == "ok")
        });
    }
    // Dead: a panic ends an async task for good (no restart); both stay
    // red by name.
    for task in ["mapek", "otlp"] {
        let component = format!("task.{task}");
        inject(&agent, task, "panic");
        let v = ready_until(&agent, &format!("{task} dead"), |st, v| {
            st == 503 && check(v, &component).is_some_and(|c| c["status"] == "failed")
        });
        let c = check(&v, &component).unwrap();
        assert!(
            c["error"].as_str().is_some_and(|e| e.starts_with("exited")),
            "{c}"
        );
        println!("{task} panicked: {c}");
    }
    agent.stop().expect("clean stop");
}

#[test]
fn a_panicking_ring_reader_restarts_and_events_keep_arriving() {
    if !require_root() {
        return;
    }
    // Every syscall slower than 20 ms is an event: `sleep 0.05` makes one.
    let config = Config::new()
        .set("debug", "fault_injection", "true")
        .set("syscalls", "slow_threshold_ms", "20")
        .set("syscalls", "slow_ignore", "[]");
    let agent = Agent::start(&config.render(), &[]);
    let events =
        |s: &sonde_tests::Scrape| s.value_or_zero("sonde_events_total", &[("ring", "syscall")]);
    let slow_sleeps = || {
        for _ in 0..5 {
            let _ = std::process::Command::new("sleep").arg("0.05").status();
        }
    };
    inject(&agent, "reader", "panic");
    let s = agent.wait_for("reader restart", Duration::from_secs(10), |s| {
        restarts(s, "reader") >= 1.0
    });
    assert_eq!(restarts(&s, "reader"), 1.0);
    let before = events(&s);
    slow_sleeps();
    let after = agent.wait_for(
        "syscall events after the reader restart",
        Duration::from_secs(10),
        |s| events(s) >= before + 5.0,
    );
    assert_eq!(
        after.value("sonde_task_up", &[("task", "reader")]),
        Some(1.0)
    );
    assert_eq!(agent.get("/health/ready").0, 200, "ready after the restart");
    println!(
        "reader restarted once; syscall ring events {before} -> {}",
        events(&after)
    );
    agent.stop().expect("clean stop");
}

#[test]
fn a_stalled_collector_fails_liveness_and_starves_the_watchdog() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("notify-stall");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let done = Arc::new(AtomicBool::new(false));
    let received = listen(socket, done.clone(), Arc::default());
    let path_s = path.display().to_string();
    let config = Config::new().set("debug", "fault_injection", "true");
    let agent = Agent::start_with_env(
        &config.render(),
        &[],
        &[("NOTIFY_SOCKET", &path_s), ("WATCHDOG_USEC", "2000000")],
    );
    let pings_since = |t: Instant| {
        with_line(&received, "WATCHDOG=1")
            .iter()
            .filter(|(at, _)| *at >= t)
            .count()
    };
    assert_eq!(agent.get("/health/live").0, 200);
    let t0 = Instant::now();
    inject(&agent, "collector", "stall");
    // 200 ms interval: stalled after 3 x 200 ms + 1 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, body) = agent.get("/health/live");
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "liveness still {status}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let c = check(&v, "task.collector").unwrap_or_else(|| panic!("no task.collector: {v}"));
    assert_eq!(c["status"], "failed", "{c}");
    assert!(
        c["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("stalled")),
        "{c}"
    );
    println!(
        "collector stalled: /health/live 503 after {} ms: {c}",
        t0.elapsed().as_millis()
    );
    // No keep-alive while stalled: systemd would kill the agent after
    // WATCHDOG_USEC.
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        pings_since(quiet_from),
        0,
        "WATCHDOG=1 while the collector is stuck"
    );
    inject(&agent, "collector", "resume");
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(10);
    while agent.get("/health/live").0 != 200 {
        assert!(Instant::now() < deadline, "liveness not back after resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let back = pings_since(resumed);
    assert!(back >= 2, "WATCHDOG=1 resumes: {back} in 2.5 s");
    println!("resumed: live 200, {back} WATCHDOG=1 in 2.5 s; none in 2.5 s while stalled");
    done.store(true, Ordering::Relaxed);
    agent.stop().expect("clean stop");
}
