//! HTTP server: /metrics, health endpoints, status and recent events, and
//! (only with `debug.fault_injection`) endpoints that break things on
//! purpose for tests and alert drills.

use std::{collections::HashMap, sync::atomic::Ordering};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use crate::{
    events::now_ms,
    health::{self, Report, Status},
    state::AppState,
    version,
};

pub fn router(state: AppState) -> Router {
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
        .route("/api/v1/events", get(events));
    if state.config_snapshot().debug.fault_injection {
        router = router
            .route("/debug/fail", post(debug_fail))
            .route("/debug/recover", post(debug_recover))
            .route("/debug/stall-reader", post(debug_stall));
    }
    router.with_state(state)
}

async fn index() -> &'static str {
    "Sonde: /metrics /health/live /health/ready /health/startup /api/v1/status /api/v1/events\n"
}

async fn metrics(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshot();
    match state
        .metrics
        .render(&snapshot, &state.events, &state.interfaces)
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

async fn live(State(state): State<AppState>) -> Response {
    report_response(health::liveness(&state).await)
}

async fn ready(State(state): State<AppState>) -> Response {
    if !state.health.started.load(Ordering::Acquire) {
        return report_response(health::startup(&state).await);
    }
    report_response(health::readiness(&state).await)
}

async fn startup(State(state): State<AppState>) -> Response {
    report_response(health::startup(&state).await)
}

async fn status(State(state): State<AppState>) -> Response {
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
        "programs": &*state.attachments,
        "interfaces": &*state.interfaces,
        "rings": rings,
        "config": config,
    }))
    .into_response()
}

async fn events(State(state): State<AppState>) -> Response {
    Json(json!({ "events": state.events.recent() })).into_response()
}

async fn debug_fail(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(component) = query.get("component") else {
        return (StatusCode::BAD_REQUEST, "component=NAME is required\n").into_response();
    };
    tracing::warn!(component, "fault injection: component marked failed");
    state
        .health
        .forced
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(component.clone(), "failed by fault injection".into());
    (StatusCode::OK, format!("{component} failed\n")).into_response()
}

async fn debug_recover(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(component) = query.get("component") else {
        return (StatusCode::BAD_REQUEST, "component=NAME is required\n").into_response();
    };
    state
        .health
        .forced
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(component);
    (StatusCode::OK, format!("{component} recovered\n")).into_response()
}

async fn debug_stall(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
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
