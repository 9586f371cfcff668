//! HTTP requests to the agent's router: the first line is
//! `METHOD TARGET` (path and query), the rest the body. The router is the
//! one `http::router` builds, with fault injection on, driven through
//! tower's `oneshot`. Its state is the agent before loading finished (a
//! running agent's state holds kernel maps and threads): every route,
//! extractor (path, query, body) and the starting answers are exercised.
#![no_main]

use std::sync::OnceLock;

use axum::{body::Body, http::Request};
use libfuzzer_sys::fuzz_target;
use sonde::http::{Server, router};
use tower::ServiceExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let head = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default().to_vec();
    let (method, target) = head.split_once(' ').unwrap_or(("GET", &head));
    let fault_injection = body.first().is_some_and(|b| b & 1 == 1);
    // A request hyper itself would not build never reaches the router.
    let Ok(request) = Request::builder()
        .method(method)
        .uri(target)
        .body(Body::from(body))
    else {
        return;
    };
    let app = router(Server::default(), fault_injection);
    runtime().block_on(async {
        let response = app
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let _ = axum::body::to_bytes(response.into_body(), 1 << 20).await;
    });
});
