//! OTLP export against a real receiver built on the official protocol
//! definitions (tests/src/otlp): the agent's metrics arrive over gRPC and
//! over HTTP/protobuf with the values /metrics shows, histograms whole and
//! the resource named; a collector outage is counted, logged once, never
//! stops the agent, and export resumes when the collector is back; MAPE-K
//! anomalies arrive as log records.
//!
//! Against a collector as production runs one (TLS with its own CA, an API
//! key header required): both transports get through with the CA file, the
//! header and gzip; without the header every export is counted failed and
//! nothing is received; the standard OTEL_* variables alone configure the
//! export, the config file wins over them, status says which applied; bad
//! settings stop the agent with exit code 2 naming the key or variable.

use std::time::{Duration, Instant};

use sonde_tests::ops::metrics_doc;
use sonde_tests::otlp::{Options, Protocol, Receiver, histogram, metrics, number, resource_attr};
use sonde_tests::{Agent, Config, Scrape, Workload, require_root, sys};

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

/// The API key the secure receiver wants: a `/` to percent-encode in
/// OTEL_EXPORTER_OTLP_HEADERS, and nothing a log would print by chance.
const API_KEY: (&str, &str) = ("x-api-key", "s3cret-Key/42");

/// A receiver with TLS (its own CA) that refuses requests without
/// [`API_KEY`].
fn secure_receiver(protocol: Protocol) -> Receiver {
    Receiver::start_with(
        protocol,
        Options {
            tls: true,
            require_header: Some((API_KEY.0.to_owned(), API_KEY.1.to_owned())),
            ..Options::default()
        },
    )
}

fn toml_string(s: &str) -> String {
    format!("{s:?}")
}

/// [`config`] with the receiver's CA and gzip, and the API key when
/// `with_key`.
fn secure_config(receiver: &Receiver, protocol: Protocol, with_key: bool) -> Config {
    let config = config(receiver, protocol)
        .set(
            "otlp",
            "ca_file",
            &toml_string(&receiver.ca_file().display().to_string()),
        )
        .set("otlp", "compression", "\"gzip\"");
    if with_key {
        config.set(
            "otlp",
            "headers",
            &format!("{{ {} = {} }}", API_KEY.0, toml_string(API_KEY.1)),
        )
    } else {
        config
    }
}

/// The `[otlp]` sources /api/v1/status reports.
fn sources(agent: &Agent) -> serde_json::Value {
    agent.status_json()["config"]["otlp"]["sources"].clone()
}

/// Neither the log nor the status endpoint shows the API key.
fn key_never_shown(agent: &Agent) {
    let status = agent.status_json().to_string();
    assert!(
        !status.contains(API_KEY.1),
        "status shows the key: {status}"
    );
    let log = agent.log();
    assert!(!log.contains(API_KEY.1), "the log shows the key:\n{log}");
    assert!(!log.contains("s3cret"), "the log shows the key:\n{log}");
}

fn metrics_arrive(protocol: Protocol) {
    let receiver = Receiver::start(protocol);
    let agent = Agent::start(&config(&receiver, protocol).render(), &[]);
    exports_match_metrics(protocol, &receiver, &agent);
}

/// The agent's exports reach `receiver` with the values /metrics shows.
fn exports_match_metrics(protocol: Protocol, receiver: &Receiver, agent: &Agent) {
    let t0 = Instant::now();
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

/// https with the collector's own CA, the API key header and gzip: the
/// same counts as over plain http, every request compressed, none refused.
fn secure_export_works(protocol: Protocol) {
    let receiver = secure_receiver(protocol);
    let config = secure_config(&receiver, protocol, true);
    let agent = Agent::start(&config.render(), &[]);
    assert!(receiver.endpoint().starts_with("https://"));
    exports_match_metrics(protocol, &receiver, &agent);
    let received = receiver.metrics_requests().len();
    let gzip = receiver.gzip_requests();
    assert!(
        gzip >= received,
        "{gzip} gzip requests for {received} metrics requests"
    );
    assert_eq!(receiver.rejected(), 0, "{}", agent.log());
    let status = agent.status_json();
    assert_eq!(
        status["config"]["otlp"]["headers"][API_KEY.0], "<redacted>",
        "{status}"
    );
    assert_eq!(sources(&agent)["headers"], "config");
    key_never_shown(&agent);
    println!("{protocol:?} over TLS: {received} requests, {gzip} gzip");
}

#[test]
fn metrics_arrive_over_grpc_with_tls_header_and_gzip() {
    if !require_root() {
        return;
    }
    secure_export_works(Protocol::Grpc);
}

#[test]
fn metrics_arrive_over_http_protobuf_with_tls_header_and_gzip() {
    if !require_root() {
        return;
    }
    secure_export_works(Protocol::HttpProtobuf);
}

/// Without the header the collector refuses (401, UNAUTHENTICATED):
/// every export counted failed, nothing received, the agent carries on.
#[test]
fn exports_without_the_header_are_counted_failed() {
    if !require_root() {
        return;
    }
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = secure_receiver(protocol);
        let config = secure_config(&receiver, protocol, false);
        let agent = Agent::start(&config.render(), &[]);
        let scrape = agent.wait_for("two failed exports", Duration::from_secs(10), |s| {
            exports(s, "failed") >= 2.0
        });
        assert_eq!(exports(&scrape, "ok"), 0.0, "{}", scrape.grep("sonde_otlp"));
        assert!(
            receiver.metrics_requests().is_empty(),
            "a refused export was recorded"
        );
        assert!(receiver.rejected() >= 2, "{} refused", receiver.rejected());
        assert_eq!(agent.get("/health/live").0, 200, "{}", agent.log());
        let log = agent.log();
        let why = match protocol {
            Protocol::Grpc => "Unauthenticated",
            Protocol::HttpProtobuf => "HTTP status 401",
        };
        assert!(
            log.lines().any(|l| l.contains("metrics export to")
                && l.contains("failing")
                && l.contains(why)),
            "no failing line naming {why}:\n{log}"
        );
        println!(
            "{protocol:?} without the header: {} failed, {} refused",
            exports(&scrape, "failed"),
            receiver.rejected()
        );
    }
}

/// No [otlp] section at all: the standard variables configure everything
/// (the key percent-encoded as the spec's list format wants), and status
/// names the environment as the source.
#[test]
fn otel_variables_alone_configure_the_export() {
    if !require_root() {
        return;
    }
    let protocol = Protocol::HttpProtobuf;
    let receiver = secure_receiver(protocol);
    let ca = receiver.ca_file().display().to_string();
    let endpoint = receiver.endpoint();
    let headers = format!("{}={}", API_KEY.0, API_KEY.1.replace('/', "%2F"));
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("OTEL_SERVICE_NAME", "sonde-from-env"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test%20lab,k8s.cluster.name=c1",
        ),
    ];
    let agent = Agent::start_with_env(&Config::new().render(), &[], &env);
    let reqs = receiver.wait_for(
        "an export configured by OTEL_* only",
        Duration::from_secs(10),
        |r| {
            r.iter()
                .any(|(_, q)| !metrics(q, "sonde_syscalls_total").is_empty())
        },
    );
    let last = &reqs.last().unwrap().1;
    assert_eq!(resource_attr(last, "service.name"), Some("sonde-from-env"));
    assert_eq!(
        resource_attr(last, "deployment.environment"),
        Some("test lab")
    );
    assert_eq!(resource_attr(last, "k8s.cluster.name"), Some("c1"));
    assert!(receiver.gzip_requests() >= 1);
    assert_eq!(receiver.rejected(), 0, "{}", agent.log());
    let sources = sources(&agent);
    for key in [
        "endpoint",
        "protocol",
        "headers",
        "ca_file",
        "compression",
        "timeout_ms",
        "interval_ms",
        "service_name",
        "resource_attributes",
    ] {
        assert_eq!(sources[key], "env", "{key}: {sources}");
    }
    assert_eq!(sources["client_cert_file"], "default", "{sources}");
    let log = agent.log();
    assert!(
        log.contains("endpoint=env OTEL_EXPORTER_OTLP_ENDPOINT"),
        "the startup log names the variable:\n{log}"
    );
    key_never_shown(&agent);
    println!("OTEL_* only: {} requests, sources {sources}", reqs.len());
}

/// The file and the variables both set: the file wins setting by setting;
/// what only a variable sets still applies.
#[test]
fn config_file_wins_over_otel_variables() {
    if !require_root() {
        return;
    }
    let protocol = Protocol::Grpc;
    let from_file = Receiver::start(protocol);
    let from_env = Receiver::start(protocol);
    let env_endpoint = from_env.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", env_endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", env_endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "sonde-from-env"),
    ];
    let agent = Agent::start_with_env(&config(&from_file, protocol).render(), &[], &env);
    let reqs = from_file.wait_for(
        "three exports to the file's endpoint",
        Duration::from_secs(10),
        |r| r.len() >= 3,
    );
    assert!(
        from_env.metrics_requests().is_empty(),
        "the variable's endpoint received {} exports",
        from_env.metrics_requests().len()
    );
    assert_eq!(
        resource_attr(&reqs.last().unwrap().1, "service.name"),
        Some("sonde-from-env")
    );
    let sources = sources(&agent);
    assert_eq!(sources["endpoint"], "config", "{sources}");
    assert_eq!(sources["protocol"], "config", "{sources}");
    assert_eq!(sources["metrics_endpoint"], "default", "{sources}");
    assert_eq!(sources["service_name"], "env", "{sources}");
    assert_eq!(sources["headers"], "default", "{sources}");
    let status = agent.status_json();
    assert_eq!(
        status["config"]["otlp"]["endpoint"],
        from_file.endpoint().as_str(),
        "{status}"
    );
}

/// Bad settings stop `sonde run` before it touches the kernel: exit 2,
/// the key or variable named, no panic, the key never echoed.
#[test]
fn bad_otlp_settings_exit_2_naming_the_key() {
    if !require_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sonde-otlp-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // (config file, environment, what the error must name)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[otlp]\nendpoint = \"https://127.0.0.1:1\"\nca_file = \"/nonexistent/ca.pem\"\n",
            &[],
            "otlp.ca_file",
        ),
        (
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        (
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=s3cret,oops"),
            ],
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            "",
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml")],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ("[otlp]\nprotocol = \"http/xml\"\n", &[], "otlp.protocol"),
    ];
    for (i, (toml, env, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let mut cmd = sys::sonde_command();
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .envs(env.iter().copied());
        let out = sys::run_with_timeout(&mut cmd, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml} {env:?}: {stderr}");
        assert!(stderr.contains(want), "{toml} {env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mutual TLS: a collector that wants a client certificate gets the one
/// `client_cert_file`/`client_key_file` name, over both transports; an
/// agent without one is refused at the handshake, counted failed.
#[test]
fn mutual_tls_with_a_client_certificate() {
    if !require_root() {
        return;
    }
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = Receiver::start_with(
            protocol,
            Options {
                tls: true,
                require_client_cert: true,
                ..Options::default()
            },
        );
        let ca = toml_string(&receiver.ca_file().display().to_string());
        let (cert, key) = receiver.client_cert_files();
        let with_cert = config(&receiver, protocol)
            .set("otlp", "ca_file", &ca)
            .set(
                "otlp",
                "client_cert_file",
                &toml_string(&cert.display().to_string()),
            )
            .set(
                "otlp",
                "client_key_file",
                &toml_string(&key.display().to_string()),
            );
        let agent = Agent::start(&with_cert.render(), &[]);
        receiver.wait_for(
            "an export with the client certificate",
            Duration::from_secs(10),
            |r| r.len() >= 2,
        );
        let log = agent.log();
        assert!(log.contains("client certificate"), "{log}");
        drop(agent);

        let received = receiver.metrics_requests().len();
        let without = config(&receiver, protocol).set("otlp", "ca_file", &ca);
        let agent = Agent::start(&without.render(), &[]);
        let scrape = agent.wait_for("two failed exports", Duration::from_secs(10), |s| {
            exports(s, "failed") >= 2.0
        });
        assert_eq!(exports(&scrape, "ok"), 0.0, "{}", scrape.grep("sonde_otlp"));
        assert_eq!(receiver.metrics_requests().len(), received);
        println!(
            "{protocol:?} mutual TLS: {received} exports with the certificate, {} failed without",
            exports(&scrape, "failed")
        );
    }
}
