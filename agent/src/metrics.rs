//! Prometheus exposition. Metrics the agent itself updates (build info,
//! probe attachment, health checks, process) live in a `Registry`; metrics
//! that mirror kernel state are rendered from the latest collector snapshot
//! on each scrape, so /metrics never touches a kernel map.

use std::sync::atomic::Ordering;

use agent_common::counters::CounterKind;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
    proto::{MetricFamily, MetricType},
};

use crate::{
    collectors::{Snapshot, counter_slots},
    events::Events,
    family::Family,
    probes::Attachment,
    version,
};

pub struct Metrics {
    pub registry: Registry,
    pub probe_attached: IntGaugeVec,
    pub health_status: GaugeVec,
    pub health_duration: HistogramVec,
    pub health_total: IntCounterVec,
    /// OTLP exports by signal and result (only when `[otlp]` is on).
    pub otlp_exports: IntCounterVec,
    pub otlp_duration: HistogramVec,
    /// TC filters a killed Sonde left attached, removed at start, by kind.
    pub leftovers_removed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sonde_build_info",
                "Sonde build: always 1, labelled with version and git commit",
            ),
            &["version", "git_sha"],
        )?;
        build_info
            .with_label_values(&[version::VERSION, version::GIT_SHA])
            .set(1);
        let probe_attached = IntGaugeVec::new(
            Opts::new(
                "sonde_probe_attached",
                "1 when the kernel program is attached to the hook in the given mode, 0 when attaching failed",
            ),
            &["program", "hook", "mode"],
        )?;
        let health_status = GaugeVec::new(
            Opts::new(
                "sonde_health_check_status",
                "Last result of a component's health check as a state set: 1 for its current state (ok, degraded, failed), 0 for the others",
            ),
            &["component", "state"],
        )?;
        let health_duration = HistogramVec::new(
            HistogramOpts::new(
                "sonde_health_check_duration_seconds",
                "Time taken by a component's health check",
            )
            .buckets(vec![0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0]),
            &["component"],
        )?;
        let health_total = IntCounterVec::new(
            Opts::new(
                "sonde_health_checks_total",
                "Health checks run, by component and result",
            ),
            &["component", "result"],
        )?;
        let otlp_exports = IntCounterVec::new(
            Opts::new(
                "sonde_otlp_exports_total",
                "OTLP exports, by signal (metrics, logs) and result (ok, failed after its retries)",
            ),
            &["signal", "result"],
        )?;
        let otlp_duration = HistogramVec::new(
            HistogramOpts::new(
                "sonde_otlp_export_duration_seconds",
                "Time an OTLP export took, retries included, by signal",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0]),
            &["signal"],
        )?;
        let leftovers_removed = IntCounterVec::new(
            Opts::new(
                "sonde_leftover_programs_removed_total",
                "Kernel programs a previous Sonde left attached (killed before it could detach) and this one removed at start, by kind (tc_ingress, tc_egress: one per interface and program)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(leftovers_removed.clone()))?;
        registry.register(Box::new(probe_attached.clone()))?;
        registry.register(Box::new(health_status.clone()))?;
        registry.register(Box::new(health_duration.clone()))?;
        registry.register(Box::new(health_total.clone()))?;
        registry.register(Box::new(otlp_exports.clone()))?;
        registry.register(Box::new(otlp_duration.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            probe_attached,
            health_status,
            health_duration,
            health_total,
            otlp_exports,
            otlp_duration,
            leftovers_removed,
        })
    }

    /// Mirrors the current attachments; series of ones that went away (an
    /// interface removed) are dropped.
    pub fn set_attachments(&self, attachments: &[Attachment]) {
        self.probe_attached.reset();
        for a in attachments {
            self.probe_attached
                .with_label_values(&[a.program, a.hook.as_str(), a.mode.as_str()])
                .set(i64::from(a.attached));
        }
    }

    /// Every metric family, sorted by name: registry metrics, the kernel
    /// snapshot and `extra`. The one source of both /metrics and OTLP.
    pub fn gather(
        &self,
        snapshot: &Snapshot,
        events: &Events,
        extra: Vec<MetricFamily>,
    ) -> Vec<MetricFamily> {
        let mut families = self.registry.gather();
        families.extend(kernel_families(snapshot, events));
        families.extend(extra);
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }

    /// The whole exposition: [`Metrics::gather`] in the text format.
    pub fn render(
        &self,
        snapshot: &Snapshot,
        events: &Events,
        extra: Vec<MetricFamily>,
    ) -> Result<String, prometheus::Error> {
        let families = self.gather(snapshot, events, extra);
        let mut out = Vec::with_capacity(64 * 1024);
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8(out).unwrap_or_default())
    }
}

/// Enforce mode's blocklist. The drop totals carry no peer label: they come
/// from a kernel counter that only grows (entries come and go, a counter
/// per peer would vanish with its entry), and per-peer numbers are in
/// /api/v1/anomalies.
fn blocklist_families(snapshot: &Snapshot, out: &mut Vec<MetricFamily>) {
    let mut entries = Family::new(
        "sonde_blocklist_entries",
        "Sources whose ingress packets are dropped now (MAPE-K enforce mode; at most [mapek] max_blocked)",
        MetricType::GAUGE,
    );
    entries.sample(&[], snapshot.blocklist.len() as f64);
    entries.done(out);
    for (name, help, value) in [
        (
            "sonde_blocked_packets_total",
            "Ingress packets dropped because their source was on the blocklist (also counted in sonde_packets_total)",
            snapshot.blocked.packets,
        ),
        (
            "sonde_blocked_bytes_total",
            "L2 frame bytes of the ingress packets dropped for the blocklist",
            snapshot.blocked.bytes,
        ),
    ] {
        let mut f = Family::new(name, help, MetricType::COUNTER);
        f.sample(&[], value as f64);
        f.done(out);
    }
}

/// `sonde_data_completeness_ratio{signal}`: the share of what the kernel saw that
/// made it into the numbers (1 = nothing lost), so a dashboard can tell
/// missing data from a quiet system.
fn completeness(snapshot: &Snapshot, out: &mut Vec<MetricFamily>) {
    let ratio = |kept: u64, lost: u64| {
        if kept + lost == 0 {
            1.0
        } else {
            kept as f64 / (kept + lost) as f64
        }
    };
    let mut family = Family::new(
        "sonde_data_completeness_ratio",
        "Share of the kernel's observations that reached the metrics (1: nothing lost), by signal",
        MetricType::GAUGE,
    );
    for (ring, counters) in &snapshot.rings {
        let signal = format!("events_{ring}");
        family.sample(
            &[("signal", &signal)],
            ratio(
                counters.produced.saturating_sub(counters.lost),
                counters.lost,
            ),
        );
    }
    for (name, reading) in &snapshot.signals {
        if let Some((kept, lost_slot)) = reading.completeness() {
            let signal = reading.completeness_signal().unwrap_or(name);
            family.sample(
                &[("signal", signal)],
                ratio(kept, snapshot.counter(lost_slot)),
            );
        }
    }
    family.done(out);
}

fn kernel_families(snapshot: &Snapshot, events: &Events) -> Vec<MetricFamily> {
    let mut out = Vec::new();

    blocklist_families(snapshot, &mut out);
    crate::pods::cache().families(&mut out);
    for (_, reading) in &snapshot.signals {
        reading.families(&mut out);
    }
    let mut simple = |name: &str, help: &str, kind: MetricType, value: f64| {
        let mut f = Family::new(name, help, kind);
        f.sample(&[], value);
        f.done(&mut out);
    };
    simple(
        "sonde_collector_duration_seconds",
        "Time the last collection of kernel maps took",
        MetricType::GAUGE,
        snapshot.duration.as_secs_f64(),
    );

    let mut received = Family::new(
        "sonde_events_total",
        "Ring-buffer events received by the agent, by ring",
        MetricType::COUNTER,
    );
    let mut produced = Family::new(
        "sonde_events_produced_total",
        "Ring-buffer events the kernel programs tried to emit, by ring",
        MetricType::COUNTER,
    );
    let mut lost = Family::new(
        "sonde_events_lost_total",
        "Ring-buffer events lost because the ring was full, by ring",
        MetricType::COUNTER,
    );
    let mut decode_errors = Family::new(
        "sonde_event_decode_errors_total",
        "Ring-buffer events the agent could not decode, by ring",
        MetricType::COUNTER,
    );
    // All three come from one snapshot, so received + lost ≤ produced.
    for ring in &events.rings {
        let labels = [("ring", ring.label)];
        let kernel = snapshot.rings.get(ring.label).copied().unwrap_or_default();
        received.sample(&labels, kernel.received as f64);
        produced.sample(&labels, kernel.produced as f64);
        lost.sample(&labels, kernel.lost as f64);
        decode_errors.sample(&labels, ring.decode_errors.load(Ordering::Relaxed) as f64);
    }
    received.done(&mut out);
    produced.done(&mut out);
    lost.done(&mut out);
    decode_errors.done(&mut out);

    let mut kernel_errors = Family::new(
        "sonde_kernel_errors_total",
        "Failures inside the kernel programs (full maps, bad ids), by kind",
        MetricType::COUNTER,
    );
    let mut malformed = Family::new(
        "sonde_packets_malformed_total",
        "Packets the parsers could not fully read (still counted and passed), by reason",
        MetricType::COUNTER,
    );
    // One counter per thing counted; flow_created is already
    // sonde_flows_created_total.
    let mut rate_limited = Family::new(
        "sonde_flow_events_rate_limited_total",
        "New-flow events the kernel did not emit because of its rate limit (the flow is still tracked)",
        MetricType::COUNTER,
    );
    for &(slot, label, kind) in counter_slots() {
        let value = snapshot.counter(slot) as f64;
        match kind {
            // signals::process exports its own.
            CounterKind::Process => {}
            CounterKind::Error => kernel_errors.sample(&[("kind", label)], value),
            CounterKind::Malformed => malformed.sample(&[("reason", label)], value),
            CounterKind::Activity if slot == agent_common::counters::FLOW_EVENT_RATE_LIMITED => {
                rate_limited.sample(&[], value)
            }
            CounterKind::Activity => {}
        }
    }
    kernel_errors.done(&mut out);
    malformed.done(&mut out);
    rate_limited.done(&mut out);

    completeness(snapshot, &mut out);

    let mut runs = Family::new(
        "sonde_bpf_program_runs_total",
        "Times each kernel program ran (needs kernel.bpf_stats_enabled)",
        MetricType::COUNTER,
    );
    let mut run_time = Family::new(
        "sonde_bpf_program_run_seconds_total",
        "CPU time spent in each kernel program (needs kernel.bpf_stats_enabled)",
        MetricType::COUNTER,
    );
    let mut missed = Family::new(
        "sonde_bpf_program_missed_runs_total",
        "Runs of each kernel program the kernel skipped because the CPU was already running a \
         BPF program (its recursion guard): what those runs would have counted is missing",
        MetricType::COUNTER,
    );
    for p in &snapshot.programs {
        runs.sample(&[("program", &p.name)], p.run_count as f64);
        run_time.sample(&[("program", &p.name)], p.run_time_ns as f64 / 1e9);
        missed.sample(&[("program", &p.name)], p.missed_runs as f64);
    }
    runs.done(&mut out);
    run_time.done(&mut out);
    missed.done(&mut out);
    out
}
