//! HTTP server: /metrics, health endpoints, status and recent events, and
//! (only with `debug.fault_injection`) endpoints that break things on
//! purpose for tests and alert drills. Who may reach what is
//! [`access`]'s; TLS and basic auth come from the [`web_config`] file;
//! the connections, limits and threads are [`serve`]'s.

pub mod access;
pub mod serve;
pub mod web_config;

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, atomic::Ordering},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use crate::{
    health::{self, CheckResult, Report, Status},
    state::AppState,
    time::now_ms,
    version,
};

/// What the server serves: the running agent once loading finished. Until
/// then every endpoint but liveness answers 503 "starting", so a startup
/// probe can tell loading from running.
#[derive(Clone, Default)]
pub struct Server {
    pub app: Arc<OnceLock<AppState>>,
    /// What the server refused (exported with /metrics).
    pub stats: Arc<crate::serving::Stats>,
}

/// Resolves to the running agent's state, or answers 503 while starting.
macro_rules! running {
    ($server:expr) => {
        match $server.app.get() {
            Some(state) => state,
            None => return starting(),
        }
    };
}

fn starting() -> Response {
    report_response(Report {
        status: Status::Failed,
        checks: vec![CheckResult {
            component: "startup".into(),
            status: Status::Failed,
            latency_ms: 0.0,
            error: Some("loading and attaching kernel programs".into()),
        }],
    })
}

/// Limits on each request (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// 408 after it.
    pub timeout: Duration,
    /// 413 above it.
    pub max_body_bytes: usize,
}

/// Every route behind the access policy, the request timeout and the body
/// limit.
pub fn router(
    server: Server,
    fault_injection: bool,
    access: Arc<access::Access>,
    limits: RequestLimits,
) -> Router {
    let stats = server.stats.clone();
    routes(server, fault_injection)
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.max_body_bytes,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
        // Outermost: the limits' refusals, counted (the policy counts its
        // own).
        .layer(axum::middleware::map_response(move |response: Response| {
            let code = response.status();
            if code == StatusCode::REQUEST_TIMEOUT || code == StatusCode::PAYLOAD_TOO_LARGE {
                stats.refused(code);
            }
            async move { response }
        }))
}

fn routes(server: Server, fault_injection: bool) -> Router {
    let mut router = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/health", get(live))
        .route("/health/live", get(live))
        .route("/liveness", get(live))
        .route("/health/ready", get(ready))
        .route("/readiness", get(ready))
        .route("/health/startup", get(startup))
        .route("/api/v1/status", get(status))
        .route("/api/v1/events", get(events))
        .route("/api/v1/anomalies", get(anomalies))
        .route("/api/v1/features", get(features))
        .route("/api/v1/anomalies/{id}/feedback", post(anomaly_feedback));
    if fault_injection {
        router = router
            .route("/debug/fail", post(debug_fail))
            .route("/debug/recover", post(debug_recover))
            .route("/debug/stall-reader", post(debug_stall))
            .route("/debug/task", post(debug_task));
    }
    router.with_state(server)
}

async fn index() -> &'static str {
    "Sonde: /metrics /health/live /health/ready /health/startup /api/v1/status /api/v1/events /api/v1/anomalies /api/v1/features\n"
}

async fn metrics(
    State(server): State<Server>,
    peer: Option<axum::Extension<access::Peer>>,
) -> Response {
    let state = running!(server);
    // A scrape that passed the guard (authenticated where the web config
    // asks for it): enforce mode never blocks the monitoring system.
    if let Some(addr) = peer.and_then(|p| p.addr)
        && let Some(mapek) = &*state.mapek.lock().unwrap_or_else(|e| e.into_inner())
    {
        let scrapers = mapek.lock().unwrap_or_else(|e| e.into_inner()).scrapers();
        scrapers.note(addr.ip());
    }
    let snapshot = state.snapshot();
    match state
        .metrics
        .render(&snapshot, &state.events, state.extra_families())
    {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {err}\n"),
        )
            .into_response(),
    }
}

fn report_response(report: Report) -> Response {
    let code = if report.status == Status::Failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report)).into_response()
}

async fn live(State(server): State<Server>) -> Response {
    match server.app.get() {
        Some(state) => report_response(health::liveness(state).await),
        // Loading takes a while on big kernels; the process is alive.
        None => report_response(Report {
            status: Status::Ok,
            checks: Vec::new(),
        }),
    }
}

async fn ready(State(server): State<Server>) -> Response {
    let state = running!(server);
    report_response(health::readiness(state).await)
}

async fn startup(State(server): State<Server>) -> Response {
    let state = running!(server);
    report_response(health::startup(state).await)
}

async fn status(State(server): State<Server>) -> Response {
    let state = running!(server);
    let snapshot = state.snapshot();
    let config = state.config_snapshot();
    let rings: serde_json::Map<String, serde_json::Value> = state
        .events
        .rings
        .iter()
        .map(|ring| {
            let kernel = snapshot.rings.get(ring.label).copied().unwrap_or_default();
            (
                ring.label.to_owned(),
                json!({
                    "produced": kernel.produced,
                    "lost": kernel.lost,
                    "received": kernel.received,
                    "decode_errors": ring.decode_errors.load(Ordering::Relaxed),
                }),
            )
        })
        .collect();
    Json(json!({
        "version": version::VERSION,
        "git_sha": version::GIT_SHA,
        "uptime_seconds": state.started_at.elapsed().as_secs_f64(),
        "kernel_release": state.caps.kernel_release,
        "capabilities": &*state.caps,
        "programs": state.attachments(),
        "interfaces": state.interfaces(),
        "rings": rings,
        "event_transport": state.events.transport,
        "config": config,
    }))
    .into_response()
}

async fn anomalies(State(server): State<Server>) -> Response {
    let state = running!(server);
    mapek_json(state, crate::mapek::Mapek::report)
}

/// What the MAPE-K loop answers (`{"enabled": false}` when it is off).
fn mapek_json(
    state: &crate::state::AppState,
    answer: fn(&crate::mapek::Mapek) -> serde_json::Value,
) -> Response {
    match &*state.mapek.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(mapek) => {
            Json(answer(&mapek.lock().unwrap_or_else(|e| e.into_inner()))).into_response()
        }
        None => Json(json!({"enabled": false})).into_response(),
    }
}

/// The feature vectors the detector saw, cycle by cycle (the latest
/// [`crate::mapek::FEATURE_HISTORY`]), with each feature's anomaly kind:
/// what an operator reads to see why something fired or did not, and what
/// `cargo xtask eval` replays through a plain 3-sigma detector.
async fn features(State(server): State<Server>) -> Response {
    let state = running!(server);
    mapek_json(state, crate::mapek::Mapek::features)
}

/// An operator's verdict on one anomaly: `{"verdict": "false_positive"}` or
/// `{"verdict": "confirmed"}`. The detector learns from it (see
/// mapek::analyze); the answer says what changed.
async fn anomaly_feedback(
    State(server): State<Server>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    use crate::mapek::analyze::{FeedbackError, Verdict};
    let state = running!(server);
    let error = |status: StatusCode, message: String| {
        (status, Json(json!({ "error": message }))).into_response()
    };
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("anomaly id {id:?} is not a number"),
        );
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        verdict: Verdict,
    }
    let verdict = match serde_json::from_slice::<Body>(&body) {
        Ok(b) => b.verdict,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"verdict\": \"false_positive\" | \"confirmed\"}}: {err}"),
            );
        }
    };
    let guard = state.mapek.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mapek) = guard.as_ref() else {
        return error(
            StatusCode::CONFLICT,
            "the MAPE-K loop is disabled ([mapek] enabled = false)".into(),
        );
    };
    let result = mapek
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .judge(id, verdict);
    match result {
        Ok(outcome) => Json(json!(outcome)).into_response(),
        Err(FeedbackError::UnknownAnomaly(id)) => error(
            StatusCode::NOT_FOUND,
            format!("no active or recent anomaly {id}"),
        ),
        Err(FeedbackError::AlreadyJudged(id)) => error(
            StatusCode::CONFLICT,
            format!("anomaly {id} already has a verdict"),
        ),
    }
}

async fn events(State(server): State<Server>) -> Response {
    let state = running!(server);
    Json(json!({ "events": state.events.recent() })).into_response()
}

async fn debug_fail(
    State(server): State<Server>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    set_forced(&server, &query, true)
}

async fn debug_recover(
    State(server): State<Server>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    set_forced(&server, &query, false)
}

/// Marks `component=NAME` failed (or clears that) for fault injection.
fn set_forced(server: &Server, query: &HashMap<String, String>, failed: bool) -> Response {
    let state = running!(server);
    let Some(component) = query.get("component") else {
        return (StatusCode::BAD_REQUEST, "component=NAME is required\n").into_response();
    };
    let mut forced = state
        .health
        .forced
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if failed {
        tracing::warn!(component, "fault injection: component marked failed");
        forced.insert(component.clone(), "failed by fault injection".into());
        (StatusCode::OK, format!("{component} failed\n")).into_response()
    } else {
        forced.remove(component);
        (StatusCode::OK, format!("{component} recovered\n")).into_response()
    }
}

/// `POST /debug/task?task=NAME&fault=panic|stall|resume`: the supervised
/// task panics at its next heartbeat, or blocks there until resumed.
async fn debug_task(
    State(server): State<Server>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let state = running!(server);
    let Some(name) = query.get("task") else {
        return (StatusCode::BAD_REQUEST, "task=NAME is required\n").into_response();
    };
    let Some(task) = state.tasks.get(name) else {
        return (StatusCode::NOT_FOUND, format!("no task {name}\n")).into_response();
    };
    match query.get("fault").map(String::as_str) {
        Some("panic") => task.inject_panic(),
        Some("stall") => task.inject_stall(true),
        Some("resume") => task.inject_stall(false),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "fault=panic|stall|resume is required\n",
            )
                .into_response();
        }
    }
    let fault = &query["fault"];
    tracing::warn!(task = name, fault, "fault injection: task");
    (StatusCode::OK, format!("{name}: {fault}\n")).into_response()
}

async fn debug_stall(
    State(server): State<Server>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let state = running!(server);
    let ring = query.get("ring").map(String::as_str).unwrap_or("syscall");
    let Some(ms) = query.get("ms").and_then(|v| v.parse::<u64>().ok()) else {
        return (StatusCode::BAD_REQUEST, "ms=N is required\n").into_response();
    };
    let Some(state_ring) = state.events.ring(ring) else {
        return (StatusCode::NOT_FOUND, format!("no ring {ring}\n")).into_response();
    };
    tracing::warn!(ring, ms, "fault injection: ring reader stalled");
    state_ring
        .stall_until_ms
        .store(now_ms() + ms, Ordering::Relaxed);
    (
        StatusCode::OK,
        format!("{ring} reader stalled for {ms} ms\n"),
    )
        .into_response()
}
