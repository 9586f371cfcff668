//! The HTTP server's own counters (connections open, taken beyond the
//! cap, requests refused by code) and their metric families. Below the
//! server and the state, so /metrics and the OTLP export carry the same.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use prometheus::proto::{MetricFamily, MetricType};

use crate::family::Family;

/// What the server refused and why, for /metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections open now (beyond the cap included).
    pub connections_open: AtomicU64,
    /// Connections taken beyond the cap (health only).
    pub connections_over_cap: AtomicU64,
    /// Connections closed as soon as accepted (cap and overflow full).
    pub connections_closed_at_once: AtomicU64,
    /// Answers 401, 403, 408, 413 and 503 (connection cap), by code.
    refused: [AtomicU64; REFUSED_CODES.len()],
}

/// The refusals [`Stats`] counts.
pub const REFUSED_CODES: [u16; 5] = [401, 403, 408, 413, 503];

impl Stats {
    /// Counts a refusal with this code (others are not refusals).
    pub fn refused(&self, code: StatusCode) {
        if let Some(i) = REFUSED_CODES.iter().position(|c| *c == code.as_u16()) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (code, count) of every refusal kind.
    pub fn refusals(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        REFUSED_CODES
            .iter()
            .zip(&self.refused)
            .map(|(code, n)| (*code, n.load(Ordering::Relaxed)))
    }
}

/// The server's own families: connections and refusals.
pub fn families(stats: &Stats) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let mut open = Family::new(
        "sonde_http_connections_open",
        "TCP connections open to the HTTP server now ([http] max_connections, plus a few beyond it for /health/*)",
        MetricType::GAUGE,
    );
    open.sample(&[], stats.connections_open.load(Ordering::Relaxed) as f64);
    open.done(&mut out);
    let mut over = Family::new(
        "sonde_http_connections_over_cap_total",
        "Connections beyond [http] max_connections: served /health/* only (health_only), or closed as soon as accepted (closed)",
        MetricType::COUNTER,
    );
    over.sample(
        &[("outcome", "health_only")],
        stats.connections_over_cap.load(Ordering::Relaxed) as f64,
    );
    over.sample(
        &[("outcome", "closed")],
        stats.connections_closed_at_once.load(Ordering::Relaxed) as f64,
    );
    over.done(&mut out);
    let mut refused = Family::new(
        "sonde_http_requests_refused_total",
        "Requests the HTTP server refused, by status code: 401 no valid credentials, 403 a state change from outside, 408 request timeout, 413 body too large, 503 beyond the connection cap",
        MetricType::COUNTER,
    );
    for (code, n) in stats.refusals() {
        refused.sample(&[("code", &code.to_string())], n as f64);
    }
    refused.done(&mut out);
    out
}
