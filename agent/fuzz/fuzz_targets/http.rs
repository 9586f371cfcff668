//! HTTP requests to the agent's router: the first line is
//! `METHOD TARGET` (path and query), the rest the body. The router is the
//! one `http::router` builds, with fault injection on, driven through
//! tower's `oneshot`. Its state is the agent before loading finished (a
//! running agent's state holds kernel maps and threads): every route,
//! extractor (path, query, body) and the starting answers are exercised,
//! behind the access guard and the request limits, with the client on
//! loopback or remote (a bit of the first body byte).
#![no_main]

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{body::Body, http::Request};
use libfuzzer_sys::fuzz_target;
use sonde::http::{
    RequestLimits, Server,
    access::{Access, Peer},
    router,
    web_config::WebConfig,
};
use tower::ServiceExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
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
    let loopback = body.first().is_some_and(|b| b & 2 == 2);
    let Ok(mut request) = Request::builder()
        .method(method)
        .uri(target)
        .body(Body::from(body))
    else {
        return;
    };
    request.extensions_mut().insert(Peer {
        addr: Some(if loopback {
            ([127, 0, 0, 1], 40000).into()
        } else {
            ([192, 0, 2, 7], 40000).into()
        }),
        verified_cert: false,
        overflow: false,
    });
    let server = Server::default();
    let access = Arc::new(Access::new(
        WebConfig::none(),
        None,
        128,
        server.stats.clone(),
    ));
    let limits = RequestLimits {
        timeout: Duration::from_secs(5),
        max_body_bytes: 64 * 1024,
    };
    let app = router(server, fault_injection, access, limits);
    runtime().block_on(async {
        let response = app
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let _ = axum::body::to_bytes(response.into_body(), 1 << 20).await;
    });
});
