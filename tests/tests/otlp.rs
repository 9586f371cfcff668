//! OTLP export against a real receiver built on the official protocol
//! definitions (tests/src/otlp): the agent's metrics arrive over gRPC and
//! over HTTP/protobuf with the values /metrics shows, histograms whole and
//! the resource named; a collector outage is counted, logged once, never
//! stops the agent, and export resumes when the collector is back; MAPE-K
//! anomalies arrive as log records.

use std::time::{Duration, Instant};

use sonde_tests::ops::metrics_doc;
use sonde_tests::otlp::{Protocol, Receiver, histogram, metrics, number, resource_attr};
use sonde_tests::{Agent, Config, Scrape, Workload, require_root};

/// getppid calls of the workload.
const N: f64 = 100_000.0;
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(20);

fn config(receiver: &Receiver, protocol: Protocol) -> Config {
    Config::new()
        .set("otlp", "endpoint", &format!("{:?}", receiver.endpoint()))
        .set("otlp", "protocol", protocol.config_value())
        .set("otlp", "interval_ms", "500")
        .set("otlp", "timeout_ms", "1000")
}

type Request = sonde_tests::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;

fn getppid(req: &Request) -> Option<f64> {
    number(req, "sonde_syscalls_total", &[("syscall", "getppid")])
}

fn scraped_getppid(s: &Scrape) -> f64 {
    s.value_or_zero("sonde_syscalls_total", &[("syscall", "getppid")])
}

fn exports(s: &Scrape, result: &str) -> f64 {
    s.value_or_zero(
        "sonde_otlp_exports_total",
        &[("signal", "metrics"), ("result", result)],
    )
}

fn metrics_arrive(protocol: Protocol) {
    let t0 = Instant::now();
    let receiver = Receiver::start(protocol);
    let agent = Agent::start(&config(&receiver, protocol).render(), &[]);
    let reqs = receiver.wait_for(
        "a first export with sonde_syscalls_total",
        Duration::from_secs(10),
        |r| {
            r.iter()
                .any(|(_, q)| !metrics(q, "sonde_syscalls_total").is_empty())
        },
    );
    let before = getppid(&reqs.last().unwrap().1).unwrap_or(0.0);

    Workload::run(&["getppid", &N.to_string()], WORKLOAD_TIMEOUT);
    let scrape = agent.wait_stable(
        "sonde_syscalls_total{syscall=\"getppid\"}",
        Duration::from_secs(10),
        Duration::from_millis(400),
        scraped_getppid,
    );
    let settled = Instant::now();
    let scraped = scraped_getppid(&scrape);
    let reqs = receiver.wait_for(
        "an export after the workload",
        Duration::from_secs(5),
        |r| r.last().is_some_and(|(at, _)| *at > settled),
    );
    let last = &reqs.last().unwrap().1;
    let exported = getppid(last).expect("sonde_syscalls_total{syscall=getppid} exported");
    assert!(
        exported - before >= N,
        "sonde_syscalls_total{{syscall=\"getppid\"}} grew by {} between two exports for {N} calls",
        exported - before
    );
    assert!(
        (exported - scraped).abs() <= 0.01 * scraped,
        "OTLP says {exported} getppid calls, /metrics says {scraped}"
    );

    // The latency histogram: OTLP explicit buckets, whole.
    let h = histogram(
        last,
        "sonde_syscall_duration_seconds",
        &[("syscall", "getppid")],
    )
    .expect("sonde_syscall_duration_seconds{syscall=getppid} exported");
    assert_eq!(h.bucket_counts.len(), h.explicit_bounds.len() + 1, "{h:?}");
    assert_eq!(h.bucket_counts.iter().sum::<u64>(), h.count, "{h:?}");
    assert!(
        h.explicit_bounds.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        h.explicit_bounds
    );
    assert!(
        h.count as f64 >= 0.99 * N && h.sum.unwrap_or(0.0) > 0.0,
        "{h:?}"
    );
    let scraped_count = scrape.value_or_zero(
        "sonde_syscall_duration_seconds_count",
        &[("syscall", "getppid")],
    );
    assert!(
        (h.count as f64 - scraped_count).abs() <= 0.01 * scraped_count,
        "histogram count: OTLP {} vs /metrics {scraped_count}",
        h.count
    );
    assert!(
        h.start_time_unix_nano > 0 && h.start_time_unix_nano < h.time_unix_nano,
        "{h:?}"
    );

    // Who is speaking.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(resource_attr(last, "service.name"), Some("sonde"));
    assert_eq!(resource_attr(last, "host.name"), Some(hostname.trim()));
    assert_eq!(resource_attr(last, "os.type"), Some("linux"));
    assert!(resource_attr(last, "os.version").is_some_and(|v| !v.is_empty()));
    assert!(resource_attr(last, "service.version").is_some_and(|v| !v.is_empty()));

    // The same metrics as /metrics: every family of a scrape taken before
    // the last export is in it.
    let missing: Vec<String> = metrics_doc::families(&scrape)
        .into_keys()
        .filter(|name| metrics(last, name).is_empty())
        .collect();
    assert!(
        missing.is_empty(),
        "families at /metrics but not exported: {missing:?}"
    );
    let scrape = agent.metrics();
    assert!(
        exports(&scrape, "ok") >= 2.0,
        "{}",
        scrape.grep("sonde_otlp")
    );
    assert_eq!(exports(&scrape, "failed"), 0.0, "{}", agent.log());
    println!(
        "{protocol:?}: {} exports received, getppid {exported} (scraped {scraped}), histogram count {}, {:?}",
        reqs.len(),
        h.count,
        t0.elapsed()
    );
}

#[test]
fn metrics_arrive_over_grpc() {
    if !require_root() {
        return;
    }
    metrics_arrive(Protocol::Grpc);
}

#[test]
fn metrics_arrive_over_http_protobuf() {
    if !require_root() {
        return;
    }
    metrics_arrive(Protocol::HttpProtobuf);
}

fn outage_is_survived(protocol: Protocol) {
    let t0 = Instant::now();
    let mut receiver = Receiver::start(protocol);
    let agent = Agent::start(&config(&receiver, protocol).render(), &[]);
    receiver.wait_for("a first export", Duration::from_secs(10), |r| !r.is_empty());

    receiver.stop();
    let received = receiver.metrics_requests().len();
    let down = agent.wait_for("two failed exports", Duration::from_secs(10), |s| {
        exports(s, "failed") >= 2.0
    });
    // The agent carries on: alive, and counting.
    assert_eq!(agent.get("/health/live").0, 200, "{}", agent.log());
    let before = scraped_getppid(&down);
    Workload::run(&["getppid", "10000"], WORKLOAD_TIMEOUT);
    agent.wait_for(
        "getppid counted while the collector is down",
        Duration::from_secs(5),
        |s| scraped_getppid(s) >= before + 10_000.0,
    );
    let failing = |log: &str| {
        log.lines()
            .filter(|l| l.contains("metrics export to") && l.contains("failing"))
            .count()
    };
    let log = agent.log();
    assert_eq!(
        failing(&log),
        1,
        "the outage should be logged once, not at every failure:\n{log}"
    );

    receiver.restart();
    let ok_before = exports(&agent.metrics(), "ok");
    receiver.wait_for(
        "an export after the collector came back",
        Duration::from_secs(10),
        |r| r.len() > received,
    );
    agent.wait_for("ok exports counted again", Duration::from_secs(5), |s| {
        exports(s, "ok") > ok_before
    });
    let log = agent.log();
    assert!(log.contains("recovered after"), "{log}");
    assert_eq!(failing(&log), 1, "{log}");
    let scrape = agent.metrics();
    assert!(
        scrape.value_or_zero(
            "sonde_otlp_export_duration_seconds_count",
            &[("signal", "metrics")]
        ) >= exports(&scrape, "ok") + exports(&scrape, "failed") - 1.0,
        "{}",
        scrape.grep("sonde_otlp")
    );
    println!(
        "{protocol:?}: {} failed exports during the outage, recovered; {:?}",
        exports(&scrape, "failed"),
        t0.elapsed()
    );
}

#[test]
fn grpc_collector_outage_is_counted_and_survived() {
    if !require_root() {
        return;
    }
    outage_is_survived(Protocol::Grpc);
}

#[test]
fn http_collector_outage_is_counted_and_survived() {
    if !require_root() {
        return;
    }
    outage_is_survived(Protocol::HttpProtobuf);
}

/// A syscall storm after a short warm-up is exported as a log record.
#[test]
fn anomalies_arrive_as_log_records() {
    if !require_root() {
        return;
    }
    let receiver = Receiver::start(Protocol::Grpc);
    let dir = std::env::temp_dir().join(format!("sonde-otlp-mapek-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = config(&receiver, Protocol::Grpc)
        .set("mapek", "warmup_cycles", "10")
        .set(
            "mapek",
            "state_dir",
            &format!("{:?}", dir.display().to_string()),
        );
    let agent = Agent::start(&config.render(), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.get_json("/api/v1/anomalies")["cycles"]
        .as_u64()
        .unwrap_or(0)
        <= 12
    {
        assert!(Instant::now() < deadline, "MAPE-K never warmed up");
        std::thread::sleep(Duration::from_millis(200));
    }
    Workload::run(&["getppid", "3000000"], Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let found = receiver.log_records().into_iter().find(|r| {
            r.event_name == "sonde.anomaly.start"
                && sonde_tests::otlp::attr(&r.attributes, "sonde.anomaly.kind")
                    == Some("syscall_storm")
        });
        if let Some(r) = found {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no syscall_storm log record within 10 s; anomalies: {}; agent log:\n{}",
            agent.get_json("/api/v1/anomalies"),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(record.severity_number >= 13, "{record:?}");
    assert!(record.time_unix_nano > 0, "{record:?}");
    let body = format!("{:?}", record.body);
    assert!(body.contains("syscalls_per_second"), "{body}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
