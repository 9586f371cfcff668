//! A real OTLP receiver for the export tests, built on the official protocol
//! definitions (`opentelemetry-proto`): a tonic gRPC server implementing the
//! collector's `MetricsService` and `LogsService`, or an HTTP/protobuf server
//! (`POST /v1/metrics`, `/v1/logs`, bodies decoded with prost), listening on
//! 127.0.0.1 inside the test process. It records every request, and can be
//! stopped and started again on the same port (a collector outage).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
    },
    common::v1::{KeyValue, any_value},
    logs::v1::LogRecord,
    metrics::v1::{HistogramDataPoint, Metric, metric::Data, number_data_point},
};
use prost::Message;
use tokio::sync::oneshot;

pub use opentelemetry_proto::tonic as proto;

/// How the agent sends: the `[otlp] protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The TOML literal for `[otlp] protocol`.
    pub fn config_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "\"grpc\"",
            Protocol::HttpProtobuf => "\"http/protobuf\"",
        }
    }
}

/// Everything received so far.
#[derive(Default)]
struct Received {
    metrics: Vec<(Instant, ExportMetricsServiceRequest)>,
    logs: Vec<ExportLogsServiceRequest>,
}

type Shared = Arc<Mutex<Received>>;

#[derive(Clone)]
struct Grpc(Shared);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut r = self.0.lock().unwrap();
        r.metrics.push((Instant::now(), request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().logs.push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

async fn http_metrics(State(shared): State<Shared>, body: Bytes) -> (StatusCode, Vec<u8>) {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(req) => {
            shared.lock().unwrap().metrics.push((Instant::now(), req));
            (
                StatusCode::OK,
                ExportMetricsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
    }
}

async fn http_logs(State(shared): State<Shared>, body: Bytes) -> (StatusCode, Vec<u8>) {
    match ExportLogsServiceRequest::decode(body) {
        Ok(req) => {
            shared.lock().unwrap().logs.push(req);
            (
                StatusCode::OK,
                ExportLogsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
    }
}

/// The receiver: a tokio runtime of its own, serving until dropped.
pub struct Receiver {
    protocol: Protocol,
    addr: SocketAddr,
    shared: Shared,
    server: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start(protocol: Protocol) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut r = Receiver {
            protocol,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared: Shared::default(),
            server: None,
            runtime,
        };
        r.serve();
        r
    }

    fn serve(&mut self) {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .unwrap_or_else(|e| panic!("OTLP receiver cannot bind {}: {e}", self.addr));
        self.addr = listener.local_addr().expect("local_addr");
        let (tx, rx) = oneshot::channel::<()>();
        let shared = self.shared.clone();
        let stop = async move {
            let _ = rx.await;
        };
        let task = match self.protocol {
            Protocol::Grpc => self.runtime.spawn(async move {
                let svc = Grpc(shared);
                tonic::transport::Server::builder()
                    .add_service(MetricsServiceServer::new(svc.clone()))
                    .add_service(LogsServiceServer::new(svc))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        stop,
                    )
                    .await
                    .expect("gRPC receiver failed");
            }),
            Protocol::HttpProtobuf => self.runtime.spawn(async move {
                let app = Router::new()
                    .route("/v1/metrics", post(http_metrics))
                    .route("/v1/logs", post(http_logs))
                    .with_state(shared);
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                    .expect("HTTP receiver failed");
            }),
        };
        self.server = Some((tx, task));
    }

    /// `http://127.0.0.1:PORT`, for `[otlp] endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the port and every connection (a collector outage).
    pub fn stop(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            let abort = task.abort_handle();
            let done = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(3), task).await });
            if done.is_err() {
                abort.abort();
            }
        }
    }

    /// Serves again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.serve();
    }

    /// Metrics requests received so far, with when they arrived.
    pub fn metrics_requests(&self) -> Vec<(Instant, ExportMetricsServiceRequest)> {
        self.shared.lock().unwrap().metrics.clone()
    }

    /// Log records received so far.
    pub fn log_records(&self) -> Vec<LogRecord> {
        self.shared
            .lock()
            .unwrap()
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| s.log_records.clone())
            .collect()
    }

    /// Polls every 50 ms until `pred` holds for the metrics requests seen
    /// so far; returns them, or panics with `what` after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[(Instant, ExportMetricsServiceRequest)]) -> bool,
    ) -> Vec<(Instant, ExportMetricsServiceRequest)> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.metrics_requests();
            if pred(&reqs) {
                return reqs;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} ({} metrics requests received)",
                reqs.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A string attribute's value.
pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// A resource attribute of the request (its first ResourceMetrics).
pub fn resource_attr<'a>(req: &'a ExportMetricsServiceRequest, key: &str) -> Option<&'a str> {
    let resource = req.resource_metrics.first()?.resource.as_ref()?;
    attr(&resource.attributes, key)
}

/// Every metric named `name` in the request.
pub fn metrics<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> Vec<&'a Metric> {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == name)
        .collect()
}

fn matches(attributes: &[KeyValue], want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| attr(attributes, k) == Some(*v))
}

/// The value of the Sum or Gauge point of `name` with these attributes.
pub fn number(req: &ExportMetricsServiceRequest, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    metrics(req, name).into_iter().find_map(|m| {
        let points = match m.data.as_ref()? {
            Data::Sum(s) => &s.data_points,
            Data::Gauge(g) => &g.data_points,
            _ => return None,
        };
        let p = points.iter().find(|p| matches(&p.attributes, want))?;
        match p.value? {
            number_data_point::Value::AsDouble(v) => Some(v),
            number_data_point::Value::AsInt(v) => Some(v as f64),
        }
    })
}

/// The Histogram point of `name` with these attributes.
pub fn histogram<'a>(
    req: &'a ExportMetricsServiceRequest,
    name: &str,
    want: &[(&str, &str)],
) -> Option<&'a HistogramDataPoint> {
    metrics(req, name)
        .into_iter()
        .find_map(|m| match m.data.as_ref()? {
            Data::Histogram(h) => h.data_points.iter().find(|p| matches(&p.attributes, want)),
            _ => None,
        })
}
