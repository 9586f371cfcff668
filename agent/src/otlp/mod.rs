//! OTLP export: owns the `[otlp]` exporter task. Every `interval_ms` it
//! takes the same metric families `/metrics` serves ([`Metrics::gather`]),
//! converts them to OTLP (counters → cumulative monotonic Sum, gauges →
//! Gauge, histograms → explicit-bucket Histogram, summaries → Summary)
//! under one Resource (service, host, kernel, Kubernetes node, and the
//! configured attributes), and sends them to a collector over gRPC or
//! HTTP/protobuf, plain or TLS, with headers and gzip if configured
//! ([`transport`]). MAPE-K anomalies go out as OTLP log records when they
//! start and when they end.
//!
//! A failed export is retried with exponential backoff, at most
//! [`ATTEMPTS`] times per interval, counted in `sonde_otlp_exports_total`
//! and logged once per change (failing, recovered). It runs in its own task
//! and every attempt has a timeout, so a slow or dead collector never holds
//! up the kernel readers or the collector.
//!
//! [`Metrics::gather`]: crate::metrics::Metrics::gather

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric::Data,
        number_data_point, summary_data_point::ValueAtQuantile,
    },
    resource::v1::Resource,
};
use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{config::OtlpConfig, state::AppState, version};

mod transport;

pub use transport::{ExportError, Signal, http_response, signal_url};
use transport::{Payload, Transport};

/// Attempts per export (the first one and its retries).
pub const ATTEMPTS: u32 = 3;
/// Backoff before the first retry; doubled before each next one, and never
/// more than a quarter of the interval.
const BACKOFF: Duration = Duration::from_millis(100);
/// Instrumentation scope name of everything exported.
const SCOPE: &str = "sonde";

/// Whether the last export of a signal worked, to log changes only.
#[derive(Debug, Default)]
struct Outcome {
    /// None before the first export.
    ok: Option<bool>,
    failures_in_a_row: u64,
}

struct Exporter {
    state: AppState,
    transport: Transport,
    timeout: Duration,
    interval: Duration,
    resource: Resource,
    /// Agent start, the start time of every cumulative point.
    start_nanos: u64,
    metrics_outcome: Outcome,
    logs_outcome: Outcome,
    /// Anomaly ids whose start (end) was exported.
    started_sent: BTreeSet<u64>,
    ended_sent: BTreeSet<u64>,
}

/// The exporter task: returns at once when no endpoint is configured, and
/// when `shutdown` changes.
///
/// `task` is the exporter's supervised task (`otlp`), beaten every cycle.
pub async fn run(
    state: AppState,
    config: OtlpConfig,
    task: Arc<crate::tasks::Task>,
    mut shutdown: watch::Receiver<bool>,
) {
    if !config.enabled() {
        return;
    }
    let transport = match Transport::new(&config) {
        Ok(t) => t,
        Err(err) => {
            warn!("OTLP export off: {err}");
            return;
        }
    };
    for signal in [Signal::Metrics, Signal::Logs] {
        if transport.url(signal).is_none() {
            continue;
        }
        for result in ["ok", "failed"] {
            state
                .metrics
                .otlp_exports
                .with_label_values(&[signal.label(), result]);
        }
    }
    let start = SystemTime::now()
        .checked_sub(state.started_at.elapsed())
        .unwrap_or_else(SystemTime::now);
    let mut exporter = Exporter {
        resource: resource(&state, &config),
        state,
        transport,
        timeout: Duration::from_millis(config.timeout_ms),
        interval: Duration::from_millis(config.interval_ms),
        start_nanos: unix_nanos(start),
        metrics_outcome: Outcome::default(),
        logs_outcome: Outcome::default(),
        started_sent: BTreeSet::new(),
        ended_sent: BTreeSet::new(),
    };
    info!("{}", describe(&config, &exporter.transport));
    info!("OTLP settings from: {}", config.sources.summary());
    let mut tick = tokio::time::interval(exporter.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        task.beat_async().await;
        tokio::select! {
            _ = exporter.cycle() => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl Exporter {
    async fn cycle(&mut self) {
        let families = {
            let state = &self.state;
            state
                .metrics
                .gather(&state.snapshot(), &state.events, state.extra_families())
        };
        let now = unix_nanos(SystemTime::now());
        if self.transport.url(Signal::Metrics).is_some() {
            let request = metrics_request(self.resource.clone(), &families, self.start_nanos, now);
            self.export(Signal::Metrics, Payload::Metrics(request))
                .await;
        }
        if self.transport.url(Signal::Logs).is_none() {
            return;
        }
        let (records, started, ended) = self.anomaly_records(now);
        if !records.is_empty() {
            let request = ExportLogsServiceRequest {
                resource_logs: by_pod(&self.resource, records),
            };
            if self.export(Signal::Logs, Payload::Logs(request)).await {
                self.started_sent.extend(started);
                self.ended_sent.extend(ended);
            }
        }
    }

    /// Sends with retries; counts and logs the outcome. True when it worked.
    async fn export(&mut self, signal: Signal, payload: Payload) -> bool {
        let t0 = std::time::Instant::now();
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let result =
                match tokio::time::timeout(self.timeout, self.transport.send(&payload)).await {
                    Ok(r) => r,
                    Err(_) => Err(ExportError::Timeout(self.timeout)),
                };
            match result {
                Err(err) if attempts < ATTEMPTS && err.retryable() => {
                    debug!(
                        "OTLP {} export attempt {attempts} failed: {err}",
                        signal.label()
                    );
                    let backoff = (BACKOFF * 2u32.pow(attempts - 1)).min(self.interval / 4);
                    tokio::time::sleep(backoff).await;
                }
                result => break result,
            }
        };
        let url = self.transport.url(signal).unwrap_or_default().to_owned();
        let metrics = &self.state.metrics;
        metrics
            .otlp_duration
            .with_label_values(&[signal.label()])
            .observe(t0.elapsed().as_secs_f64());
        metrics
            .otlp_exports
            .with_label_values(&[signal.label(), if result.is_ok() { "ok" } else { "failed" }])
            .inc();
        let outcome = match signal {
            Signal::Metrics => &mut self.metrics_outcome,
            Signal::Logs => &mut self.logs_outcome,
        };
        match result {
            Ok(()) => {
                match outcome.ok {
                    None => info!("OTLP: first {} export to {} ok", signal.label(), url),
                    Some(false) => info!(
                        "OTLP: {} export to {} recovered after {} failed export(s)",
                        signal.label(),
                        url,
                        outcome.failures_in_a_row
                    ),
                    Some(true) => {}
                }
                outcome.ok = Some(true);
                outcome.failures_in_a_row = 0;
                true
            }
            Err(err) => {
                if outcome.ok != Some(false) {
                    warn!(
                        "OTLP: {} export to {} failing: {err} ({attempts} attempt(s)); counted in \
                         sonde_otlp_exports_total, logged again when it recovers",
                        signal.label(),
                        url
                    );
                } else {
                    debug!("OTLP {} export failed again: {err}", signal.label());
                }
                outcome.ok = Some(false);
                outcome.failures_in_a_row += 1;
                false
            }
        }
    }

    /// Log records for anomalies whose start or end was not exported yet,
    /// with the ids they cover.
    fn anomaly_records(&mut self, now: u64) -> (Vec<LogRecord>, Vec<u64>, Vec<u64>) {
        let report = {
            let mapek = self.state.mapek.lock().unwrap_or_else(|e| e.into_inner());
            match mapek.as_ref() {
                Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()).report(),
                None => return Default::default(),
            }
        };
        let anomalies: Vec<&serde_json::Value> = ["active", "recent"]
            .iter()
            .filter_map(|k| report[*k].as_array())
            .flatten()
            .collect();
        let present: BTreeSet<u64> = anomalies.iter().filter_map(|a| a["id"].as_u64()).collect();
        // Forget anomalies the loop forgot (its recent list is bounded).
        self.started_sent.retain(|id| present.contains(id));
        self.ended_sent.retain(|id| present.contains(id));
        let (mut records, mut started, mut ended) = (Vec::new(), Vec::new(), Vec::new());
        for a in anomalies {
            let Some(id) = a["id"].as_u64() else { continue };
            if !self.started_sent.contains(&id) && !started.contains(&id) {
                records.push(anomaly_record(a, false, now));
                started.push(id);
            }
            if !a["end"].is_null() && !self.ended_sent.contains(&id) && !ended.contains(&id) {
                records.push(anomaly_record(a, true, now));
                ended.push(id);
            }
        }
        (records, started, ended)
    }
}

/// An anomaly's pod fields and the OpenTelemetry semantic conventions'
/// resource attributes for them.
const K8S_ATTRIBUTES: [(&str, &str); 3] = [
    ("namespace", "k8s.namespace.name"),
    ("pod", "k8s.pod.name"),
    ("container", "k8s.container.name"),
];

/// Log records grouped by the pod they name: the `k8s.*` attributes move
/// from each record into its group's resource (the agent's own resource
/// plus them), as the semantic conventions place them.
fn by_pod(base: &Resource, records: Vec<LogRecord>) -> Vec<ResourceLogs> {
    let mut groups: Vec<(Vec<KeyValue>, Vec<LogRecord>)> = Vec::new();
    for mut record in records {
        let (k8s, rest): (Vec<KeyValue>, Vec<KeyValue>) = record
            .attributes
            .into_iter()
            .partition(|kv| kv.key.starts_with("k8s."));
        record.attributes = rest;
        match groups.iter_mut().find(|(key, _)| *key == k8s) {
            Some((_, group)) => group.push(record),
            None => groups.push((k8s, vec![record])),
        }
    }
    groups
        .into_iter()
        .map(|(k8s, log_records)| {
            let mut resource = base.clone();
            resource.attributes.extend(k8s);
            ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect()
}

/// One anomaly (as in /api/v1/anomalies) starting or ending, as a log record.
fn anomaly_record(a: &serde_json::Value, end: bool, now: u64) -> LogRecord {
    let kind = a["kind"].as_str().unwrap_or("unknown");
    let severity = a["severity"].as_str().unwrap_or("warning");
    let at = if end { &a["end"] } else { &a["start"] };
    let time = at
        .as_f64()
        .map(|s| (s.max(0.0) * 1e9) as u64)
        .unwrap_or(now);
    let evidence: Vec<String> = a["evidence"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} {} (baseline {}, score {})",
                e["feature"].as_str().unwrap_or("?"),
                e["observed"],
                e["baseline"],
                e["score"]
            )
        })
        .collect();
    let subject = a["subject"].as_str();
    let body = format!(
        "{kind} ({severity}) {}{}: {}",
        if end { "ended" } else { "started" },
        subject.map(|s| format!(" on {s}")).unwrap_or_default(),
        evidence.join("; ")
    );
    let (number, text) = match (end, severity) {
        (true, _) => (SeverityNumber::Info, "INFO"),
        (false, "critical") => (SeverityNumber::Error, "ERROR"),
        (false, _) => (SeverityNumber::Warn, "WARN"),
    };
    let mut attributes = vec![
        kv_int("sonde.anomaly.id", a["id"].as_i64().unwrap_or(0)),
        kv_str("sonde.anomaly.kind", kind),
        kv_str("sonde.anomaly.severity", severity),
        kv_double("sonde.anomaly.score", a["score"].as_f64().unwrap_or(0.0)),
    ];
    if let Some(subject) = subject {
        attributes.push(kv_str("sonde.anomaly.subject", subject));
    }
    // The top culprit, typed (the others are in /api/v1/anomalies).
    if let Some(top) = a["culprits"].as_array().and_then(|c| c.first()) {
        for key in [
            "kind",
            "peer",
            "protocol",
            "comm",
            "cgroup",
            "reason",
            "interface",
            "netns",
            "device",
            "measure",
        ] {
            if let Some(v) = top[key].as_str() {
                attributes.push(kv_str(&format!("sonde.anomaly.culprit.{key}"), v));
            }
        }
        for key in ["pid", "sample_period"] {
            if let Some(v) = top[key].as_i64() {
                attributes.push(kv_int(&format!("sonde.anomaly.culprit.{key}"), v));
            }
        }
        for key in ["share", "amount"] {
            if let Some(v) = top[key].as_f64() {
                attributes.push(kv_double(&format!("sonde.anomaly.culprit.{key}"), v));
            }
        }
        if let Some(proven) = top["proven"].as_bool() {
            attributes.push(KeyValue {
                key: "sonde.anomaly.culprit.proven".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(proven)),
                }),
                ..Default::default()
            });
        }
    }
    // The subject's pod: moved into the resource by `by_pod`. A container
    // outside any pod (podman) is no k8s.* container: its name and id go
    // as the semantic conventions' container.* record attributes.
    let in_pod = a["pod"].as_str().is_some_and(|p| !p.is_empty());
    if in_pod {
        for (field, key) in K8S_ATTRIBUTES {
            if let Some(value) = a[field].as_str().filter(|v| !v.is_empty()) {
                attributes.push(kv_str(key, value));
            }
        }
    } else {
        for (field, key) in [
            ("container", "container.name"),
            ("container_id", "container.id"),
        ] {
            if let Some(value) = a[field].as_str().filter(|v| !v.is_empty()) {
                attributes.push(kv_str(key, value));
            }
        }
    }
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: now,
        severity_number: number as i32,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body)),
        }),
        attributes,
        event_name: if end {
            "sonde.anomaly.end".into()
        } else {
            "sonde.anomaly.start".into()
        },
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn kv_double(key: &str, value: f64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(value)),
        }),
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.into(),
        version: version::VERSION.into(),
        ..Default::default()
    }
}

/// One line for the startup log: where each signal goes, how, and with
/// which header names (never their values).
fn describe(config: &OtlpConfig, transport: &Transport) -> String {
    let to = |signal| transport.url(signal).unwrap_or("nowhere (no endpoint)");
    let https = [Signal::Metrics, Signal::Logs]
        .into_iter()
        .filter_map(|s| transport.url(s))
        .any(|u| u.starts_with("https"));
    let tls = match (&config.ca_file, https) {
        (_, false) => "no TLS".to_owned(),
        (Some(ca), true) => format!("TLS, CA {}", ca.display()),
        (None, true) => "TLS, system roots".to_owned(),
    };
    let client = if https && config.client_cert_file.is_some() {
        ", client certificate"
    } else {
        ""
    };
    format!(
        "OTLP: exporting metrics to {} and anomalies to {} ({}, {tls}{client}, compression {}, \
         headers {:?}) every {} ms",
        to(Signal::Metrics),
        to(Signal::Logs),
        config.protocol.label(),
        config.compression.label(),
        config.headers.names(),
        config.interval_ms
    )
}

/// Who is exporting: the service, the host and kernel, and the Kubernetes
/// node (`NODE_NAME`, set from the downward API in the DaemonSet), with
/// the configured attributes and service name.
fn resource(state: &AppState, config: &OtlpConfig) -> Resource {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
    let mut resource = resource_attributes(&hostname, &state.caps.kernel_release, node.as_deref());
    configure_resource(&mut resource, config);
    resource
}

/// Adds `resource_attributes` (replacing Sonde's own of the same name),
/// then `service_name` as `service.name`.
fn configure_resource(resource: &mut Resource, config: &OtlpConfig) {
    let mut set = |key: &str, value: &str| {
        resource.attributes.retain(|kv| kv.key != key);
        resource.attributes.push(kv_str(key, value));
    };
    for (key, value) in &config.resource_attributes {
        set(key, value);
    }
    if let Some(name) = &config.service_name {
        set("service.name", name);
    }
}

fn resource_attributes(hostname: &str, kernel_release: &str, node: Option<&str>) -> Resource {
    let mut attributes = vec![
        kv_str("service.name", "sonde"),
        kv_str("service.version", version::VERSION),
        kv_str("os.type", "linux"),
        kv_str("os.version", kernel_release),
    ];
    if !hostname.is_empty() {
        attributes.push(kv_str("host.name", hostname));
    }
    if let Some(node) = node {
        attributes.push(kv_str("k8s.node.name", node));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// Every family as OTLP metrics, in one ResourceMetrics.
fn metrics_request(
    resource: Resource,
    families: &[MetricFamily],
    start: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: families
                    .iter()
                    .filter_map(|f| convert(f, start, now))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn attributes(labels: &[LabelPair]) -> Vec<KeyValue> {
    labels.iter().map(|l| kv_str(l.name(), l.value())).collect()
}

/// UCUM unit from the Prometheus naming conventions.
fn unit(name: &str) -> &'static str {
    if name.contains("_seconds") {
        "s"
    } else if name.contains("_bytes") {
        "By"
    } else {
        ""
    }
}

/// One Prometheus family as an OTLP metric (None: no series).
fn convert(family: &MetricFamily, start: u64, now: u64) -> Option<Metric> {
    let series = family.get_metric();
    if series.is_empty() {
        return None;
    }
    let number = |m: &prometheus::proto::Metric, value: f64| NumberDataPoint {
        attributes: attributes(m.get_label()),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let data = match family.get_field_type() {
        MetricType::COUNTER => Data::Sum(Sum {
            data_points: series
                .iter()
                .map(|m| number(m, m.get_counter().value()))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::GAUGE | MetricType::UNTYPED => Data::Gauge(Gauge {
            data_points: series
                .iter()
                .map(|m| {
                    let value = if family.get_field_type() == MetricType::GAUGE {
                        m.get_gauge().value()
                    } else {
                        m.untyped.value()
                    };
                    NumberDataPoint {
                        start_time_unix_nano: 0,
                        ..number(m, value)
                    }
                })
                .collect(),
        }),
        MetricType::HISTOGRAM => Data::Histogram(Histogram {
            data_points: series
                .iter()
                .map(|m| histogram_point(m, start, now))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        MetricType::SUMMARY => Data::Summary(Summary {
            data_points: series
                .iter()
                .map(|m| {
                    let s = m.get_summary();
                    SummaryDataPoint {
                        attributes: attributes(m.get_label()),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: s.sample_count(),
                        sum: s.sample_sum(),
                        quantile_values: s
                            .get_quantile()
                            .iter()
                            .map(|q| ValueAtQuantile {
                                quantile: q.quantile(),
                                value: q.value(),
                            })
                            .collect(),
                        ..Default::default()
                    }
                })
                .collect(),
        }),
    };
    Some(Metric {
        name: family.name().to_owned(),
        description: family.help().to_owned(),
        unit: unit(family.name()).to_owned(),
        data: Some(data),
        ..Default::default()
    })
}

/// Prometheus' cumulative buckets (without +Inf) as OTLP explicit bounds and
/// per-bucket counts (one more count than bounds: the open last bucket).
fn histogram_point(m: &prometheus::proto::Metric, start: u64, now: u64) -> HistogramDataPoint {
    let h = m.get_histogram();
    let count = h.get_sample_count();
    let mut explicit_bounds = Vec::new();
    let mut bucket_counts = Vec::new();
    let mut below = 0u64;
    for b in h.get_bucket() {
        if b.upper_bound().is_infinite() {
            continue;
        }
        let cumulative = b.cumulative_count();
        explicit_bounds.push(b.upper_bound());
        bucket_counts.push(cumulative.saturating_sub(below));
        below = below.max(cumulative);
    }
    bucket_counts.push(count.saturating_sub(below));
    HistogramDataPoint {
        attributes: attributes(m.get_label()),
        start_time_unix_nano: start,
        time_unix_nano: now,
        count,
        sum: Some(h.get_sample_sum()),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    fn family<'a>(families: &'a [MetricFamily], name: &str) -> &'a MetricFamily {
        families.iter().find(|f| f.name() == name).unwrap()
    }

    #[test]
    fn counters_gauges_and_histograms_convert() {
        let registry = Registry::new();
        let calls = IntCounterVec::new(Opts::new("calls_total", "calls"), &["syscall"]).unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("latency_seconds", "latency").buckets(vec![0.1, 1.0]),
            &["syscall"],
        )
        .unwrap();
        let up = prometheus::IntGauge::new("up_now", "up").unwrap();
        registry.register(Box::new(calls.clone())).unwrap();
        registry.register(Box::new(latency.clone())).unwrap();
        registry.register(Box::new(up.clone())).unwrap();
        calls.with_label_values(&["getppid"]).inc_by(7);
        for v in [0.05, 0.5, 0.7, 3.0, 4.0] {
            latency.with_label_values(&["read"]).observe(v);
        }
        up.set(1);
        let families = registry.gather();

        let m = convert(family(&families, "calls_total"), 10, 20).unwrap();
        let Some(Data::Sum(sum)) = m.data else {
            panic!("not a sum: {m:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &sum.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(7.0)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (10, 20));
        assert_eq!(p.attributes, vec![kv_str("syscall", "getppid")]);

        let m = convert(family(&families, "latency_seconds"), 10, 20).unwrap();
        assert_eq!(m.unit, "s");
        let Some(Data::Histogram(h)) = m.data else {
            panic!("not a histogram: {m:?}")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 2]);
        assert_eq!(p.count, 5);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert!((p.sum.unwrap() - 8.25).abs() < 1e-9);

        let m = convert(family(&families, "up_now"), 10, 20).unwrap();
        let Some(Data::Gauge(g)) = m.data else {
            panic!("not a gauge: {m:?}")
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(1.0))
        );
    }

    #[test]
    fn resource_names_service_host_kernel_and_node() {
        let r = resource_attributes("node-1", "6.18.0", Some("worker-3"));
        let get = |k: &str| {
            r.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        let s = |v: &str| Some(any_value::Value::StringValue(v.into()));
        assert_eq!(get("service.name"), s("sonde"));
        assert_eq!(get("host.name"), s("node-1"));
        assert_eq!(get("os.version"), s("6.18.0"));
        assert_eq!(get("k8s.node.name"), s("worker-3"));
        assert!(get("k8s.node.name").is_some());
        let r = resource_attributes("node-1", "6.18.0", None);
        assert!(!r.attributes.iter().any(|kv| kv.key == "k8s.node.name"));
    }

    #[test]
    fn configured_attributes_and_service_name_win() {
        let mut r = resource_attributes("node-1", "6.18.0", None);
        let mut config = OtlpConfig {
            resource_attributes: [
                ("deployment.environment", "prod"),
                ("host.name", "edge-7"),
                ("service.name", "from-attributes"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        };
        configure_resource(&mut r, &config);
        let get = |r: &Resource, k: &str| {
            let v: Vec<_> = r.attributes.iter().filter(|kv| kv.key == k).collect();
            assert!(v.len() <= 1, "{k} twice: {v:?}");
            v.first()
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        let s = |v: &str| Some(any_value::Value::StringValue(v.into()));
        assert_eq!(get(&r, "deployment.environment"), s("prod"));
        assert_eq!(get(&r, "host.name"), s("edge-7"));
        assert_eq!(get(&r, "service.name"), s("from-attributes"));
        assert_eq!(get(&r, "os.version"), s("6.18.0"));
        config.service_name = Some("sonde-eu".into());
        configure_resource(&mut r, &config);
        assert_eq!(get(&r, "service.name"), s("sonde-eu"));
    }

    #[test]
    fn the_startup_line_names_headers_never_their_values() {
        let config = OtlpConfig {
            // http: no dependence on the machine's root certificates.
            endpoint: Some("http://collector:4318".into()),
            protocol: crate::config::OtlpProtocol::HttpProtobuf,
            headers: crate::config::OtlpHeaders(
                [("authorization".to_owned(), "Bearer s3cret".to_owned())].into(),
            ),
            compression: crate::config::OtlpCompression::Gzip,
            ..Default::default()
        };
        let line = describe(&config, &Transport::new(&config).unwrap());
        assert!(line.contains("http://collector:4318/v1/metrics"), "{line}");
        assert!(line.contains("http://collector:4318/v1/logs"), "{line}");
        assert!(line.contains("(http/protobuf, no TLS,"), "{line}");
        assert!(line.contains("compression gzip"), "{line}");
        assert!(line.contains("authorization"), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn anomalies_become_log_records() {
        let a = serde_json::json!({
            "id": 4, "kind": "syscall_storm", "severity": "critical", "score": 12.5,
            "start": 1700000000.5, "end": null, "subject": "pid 42",
            "evidence": [{"feature": "syscalls_per_second", "baseline": 100.0,
                          "observed": 90000.0, "score": 12.5}],
            "culprits": [{"kind": "process", "pid": 42, "comm": "stress-ng",
                          "measure": "syscalls_per_second", "amount": 88000.0,
                          "share": 0.97, "proven": true}],
        });
        let r = anomaly_record(&a, false, 7);
        assert!(
            r.attributes
                .contains(&kv_str("sonde.anomaly.culprit.comm", "stress-ng"))
        );
        assert!(
            r.attributes
                .contains(&kv_int("sonde.anomaly.culprit.pid", 42))
        );
        assert!(
            r.attributes
                .contains(&kv_double("sonde.anomaly.culprit.share", 0.97))
        );
        assert_eq!(r.time_unix_nano, 1_700_000_000_500_000_000);
        assert_eq!(r.severity_number, SeverityNumber::Error as i32);
        assert_eq!(r.event_name, "sonde.anomaly.start");
        assert!(
            r.attributes
                .contains(&kv_str("sonde.anomaly.kind", "syscall_storm"))
        );
        let Some(any_value::Value::StringValue(body)) = r.body.and_then(|b| b.value) else {
            panic!("no body")
        };
        assert!(body.contains("syscalls_per_second 90000.0"), "{body}");
        let r = anomaly_record(&a, true, 7);
        assert_eq!(r.severity_number, SeverityNumber::Info as i32);
        assert_eq!(r.time_unix_nano, 7, "no end time: observed time");
    }

    #[test]
    fn a_pods_anomalies_carry_its_k8s_resource_attributes() {
        let plain = serde_json::json!({"id": 1, "kind": "fork_storm", "start": 1.0});
        let in_pod = serde_json::json!({
            "id": 2, "kind": "syscall_storm", "start": 1.0,
            "pod": "cart-1", "namespace": "shop", "container": "cart",
        });
        let records = vec![
            anomaly_record(&plain, false, 7),
            anomaly_record(&in_pod, false, 7),
        ];
        let base = Resource {
            attributes: vec![kv_str("host.name", "n1")],
            ..Default::default()
        };
        let logs = by_pod(&base, records);
        assert_eq!(logs.len(), 2, "one resource per pod, one without");
        assert_eq!(
            logs[0].resource.as_ref().unwrap().attributes,
            base.attributes
        );
        let attrs = &logs[1].resource.as_ref().unwrap().attributes;
        for kv in [
            kv_str("k8s.namespace.name", "shop"),
            kv_str("k8s.pod.name", "cart-1"),
            kv_str("k8s.container.name", "cart"),
        ] {
            assert!(attrs.contains(&kv), "{kv:?} missing from {attrs:?}");
        }
        let record = &logs[1].scope_logs[0].log_records[0];
        assert!(
            !record
                .attributes
                .iter()
                .any(|kv| kv.key.starts_with("k8s."))
        );
    }
}
