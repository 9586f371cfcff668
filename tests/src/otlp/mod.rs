//! A real OTLP receiver for the export tests, built on the official protocol
//! definitions (`opentelemetry-proto`): a tonic gRPC server implementing the
//! collector's `MetricsService` and `LogsService`, or an HTTP/protobuf server
//! (`POST /v1/metrics`, `/v1/logs`, bodies decoded with prost), listening on
//! 127.0.0.1 inside the test process. It records every request, and can be
//! stopped and started again on the same port (a collector outage).
//!
//! Like a production collector it can ([`Options`]) serve TLS only, with a
//! certificate for 127.0.0.1 and localhost signed by a CA made at start
//! (rcgen; the agent trusts it through [`Receiver::ca_file`]), and refuse
//! requests without an API-key header (HTTP 401, gRPC UNAUTHENTICATED).
//! gzip request bodies are accepted and counted.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
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
use tonic::codec::CompressionEncoding;

use crate::sys::TempDir;

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

/// How the receiver serves, beyond plain gRPC or HTTP.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// TLS only, with a certificate signed by a CA made at start.
    pub tls: bool,
    /// With `tls`: mutual TLS, refusing clients without a certificate
    /// signed by the same CA ([`Receiver::client_cert_files`] has one).
    pub require_client_cert: bool,
    /// A header (name, value) every request must carry; without it the
    /// request is refused (HTTP 401, gRPC UNAUTHENTICATED) and counted in
    /// [`Receiver::rejected`].
    pub require_header: Option<(String, String)>,
}

/// Everything received so far.
#[derive(Default)]
struct Received {
    metrics: Vec<(Instant, ExportMetricsServiceRequest)>,
    logs: Vec<ExportLogsServiceRequest>,
    /// Requests (accepted ones) whose body came gzip-compressed.
    gzip: usize,
    /// Requests refused for want of the header.
    rejected: usize,
}

/// What the handlers share: the record and the header to require.
#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Received>>,
    require_header: Option<(String, String)>,
}

impl Shared {
    /// Whether a request with these headers may pass; counts refusals.
    fn authorized(&self, value: Option<&[u8]>) -> bool {
        let Some((_, want)) = &self.require_header else {
            return true;
        };
        let ok = value == Some(want.as_bytes());
        if !ok {
            self.received.lock().unwrap().rejected += 1;
        }
        ok
    }

    fn header_name(&self) -> &str {
        self.require_header
            .as_ref()
            .map(|(n, _)| n.as_str())
            .unwrap_or("")
    }
}

#[derive(Clone)]
struct Grpc(Shared);

impl Grpc {
    /// Checks the header and notes the encoding of one request.
    fn admit<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let md = request.metadata();
        let value = md.get(self.0.header_name()).map(|v| v.as_bytes());
        if !self.0.authorized(value) {
            return Err(tonic::Status::unauthenticated("missing or wrong API key"));
        }
        if md.get("grpc-encoding").is_some_and(|v| v == "gzip") {
            self.0.received.lock().unwrap().gzip += 1;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.admit(&request)?;
        let mut r = self.0.received.lock().unwrap();
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
        self.admit(&request)?;
        self.0
            .received
            .lock()
            .unwrap()
            .logs
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The header check and the body, gunzipped when it says so.
fn http_body(shared: &Shared, headers: &HeaderMap, body: Bytes) -> Result<Vec<u8>, StatusCode> {
    let value = headers.get(shared.header_name()).map(|v| v.as_bytes());
    if !shared.authorized(value) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    match headers.get("content-encoding").map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(body.to_vec()),
        Some(b"gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .map_err(|_| StatusCode::BAD_REQUEST)?;
            shared.received.lock().unwrap().gzip += 1;
            Ok(out)
        }
        Some(_) => Err(StatusCode::UNSUPPORTED_MEDIA_TYPE),
    }
}

async fn http_metrics(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let body = match http_body(&shared, &headers, body) {
        Ok(b) => b,
        Err(status) => return (status, Vec::new()),
    };
    match ExportMetricsServiceRequest::decode(&body[..]) {
        Ok(req) => {
            let mut r = shared.received.lock().unwrap();
            r.metrics.push((Instant::now(), req));
            (
                StatusCode::OK,
                ExportMetricsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
    }
}

async fn http_logs(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let body = match http_body(&shared, &headers, body) {
        Ok(b) => b,
        Err(status) => return (status, Vec::new()),
    };
    match ExportLogsServiceRequest::decode(&body[..]) {
        Ok(req) => {
            shared.received.lock().unwrap().logs.push(req);
            (
                StatusCode::OK,
                ExportLogsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
    }
}

/// A CA and a server certificate it signed, for 127.0.0.1 and localhost,
/// made at test time; the CA's PEM file is what the agent trusts.
struct Tls {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    ca_file: PathBuf,
    /// A client certificate and key the CA signed (PEM files).
    client_files: (PathBuf, PathBuf),
    require_client_cert: bool,
    _dir: TempDir,
}

impl Tls {
    fn generate(require_client_cert: bool) -> Tls {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "sonde test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
        let cert = server.signed_by(&key, &issuer).expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let mut client =
            CertificateParams::new(vec!["sonde-agent".to_owned()]).expect("client params");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client
            .signed_by(&client_key, &issuer)
            .expect("client certificate");
        let dir = TempDir::new("otlp-tls");
        let ca_file = dir.write("ca.pem", &ca_cert.pem());
        let client_files = (
            dir.write("client.pem", &client_cert.pem()),
            dir.write("client-key.pem", &client_key.serialize_pem()),
        );
        Tls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: ca_cert.pem(),
            ca_file,
            client_files,
            require_client_cert,
            _dir: dir,
        }
    }

    fn server_config(&self) -> tokio_rustls::rustls::ServerConfig {
        use tokio_rustls::rustls::{
            self,
            pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        };
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("server key PEM");
        // ring, as the agent uses (deprecated in rustls 0.23.48 for its
        // lack of post-quantum key exchange, which no test needs).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = if self.require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
                roots.add(ca.expect("CA PEM")).expect("CA certificate");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

/// Serves `app` over TLS on `listener` until `stop`; dropping the
/// connections' tasks with it closes them (a collector outage).
async fn serve_https(
    listener: tokio::net::TcpListener,
    app: Router,
    config: tokio_rustls::rustls::ServerConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    // A failed handshake (an untrusting client) just ends it.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        }
    }
    connections.shutdown().await;
}

/// The receiver: a tokio runtime of its own, serving until dropped.
pub struct Receiver {
    protocol: Protocol,
    addr: SocketAddr,
    shared: Shared,
    tls: Option<Tls>,
    server: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start(protocol: Protocol) -> Receiver {
        Receiver::start_with(protocol, Options::default())
    }

    /// Listens on `addr` (port 0: a free one), plain; for a receiver in a
    /// process of its own that a soak run stops and starts again on the
    /// same port (`sonde-workload otlp-receive`).
    pub fn start_on(protocol: Protocol, addr: SocketAddr) -> Receiver {
        let mut r = Receiver::unstarted(protocol, Options::default());
        r.addr = addr;
        r.serve();
        r
    }

    /// Listens on 127.0.0.1 on a free port, with TLS or a required header
    /// as `options` say.
    pub fn start_with(protocol: Protocol, options: Options) -> Receiver {
        let mut r = Receiver::unstarted(protocol, options);
        r.serve();
        r
    }

    fn unstarted(protocol: Protocol, options: Options) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Receiver {
            protocol,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared: Shared {
                received: Arc::default(),
                require_header: options.require_header,
            },
            tls: options
                .tls
                .then(|| Tls::generate(options.require_client_cert)),
            server: None,
            runtime,
        }
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
        let tls = self.tls.as_ref().map(|t| {
            let identity = tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem);
            let config = tonic::transport::ServerTlsConfig::new().identity(identity);
            if t.require_client_cert {
                config.client_ca_root(tonic::transport::Certificate::from_pem(&t.ca_pem))
            } else {
                config
            }
        });
        let tls_config = self.tls.as_ref().map(Tls::server_config);
        let task = match self.protocol {
            Protocol::Grpc => self.runtime.spawn(async move {
                let svc = Grpc(shared);
                let gzip = CompressionEncoding::Gzip;
                let mut builder = tonic::transport::Server::builder();
                if let Some(config) = tls {
                    builder = builder.tls_config(config).expect("gRPC receiver TLS");
                }
                builder
                    .add_service(MetricsServiceServer::new(svc.clone()).accept_compressed(gzip))
                    .add_service(LogsServiceServer::new(svc).accept_compressed(gzip))
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
                match tls_config {
                    Some(config) => serve_https(listener, app, config, stop).await,
                    None => axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                        .expect("HTTP receiver failed"),
                }
            }),
        };
        self.server = Some((tx, task));
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), for `[otlp]
    /// endpoint`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM file of the CA that signed the receiver's certificate.
    /// Panics without TLS.
    pub fn ca_file(&self) -> &Path {
        &self.tls.as_ref().expect("a TLS receiver").ca_file
    }

    /// A client certificate and key (PEM files) signed by the receiver's
    /// CA, for `[otlp] client_cert_file` and `client_key_file`. Panics
    /// without TLS.
    pub fn client_cert_files(&self) -> (&Path, &Path) {
        let (cert, key) = &self.tls.as_ref().expect("a TLS receiver").client_files;
        (cert, key)
    }

    /// Accepted requests whose body came gzip-compressed.
    pub fn gzip_requests(&self) -> usize {
        self.shared.received.lock().unwrap().gzip
    }

    /// Requests refused for want of the required header.
    pub fn rejected(&self) -> usize {
        self.shared.received.lock().unwrap().rejected
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

    /// How many metrics requests arrived so far (without copying them).
    pub fn metrics_request_count(&self) -> usize {
        self.shared.received.lock().unwrap().metrics.len()
    }

    /// Metrics requests received so far, with when they arrived.
    pub fn metrics_requests(&self) -> Vec<(Instant, ExportMetricsServiceRequest)> {
        self.shared.received.lock().unwrap().metrics.clone()
    }

    /// Log records received so far.
    pub fn log_records(&self) -> Vec<LogRecord> {
        self.shared
            .received
            .lock()
            .unwrap()
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| s.log_records.clone())
            .collect()
    }

    /// Log records received so far, each with its resource's attributes.
    pub fn resource_log_records(&self) -> Vec<(Vec<KeyValue>, LogRecord)> {
        let received = self.shared.received.lock().unwrap();
        let mut out = Vec::new();
        for r in received.logs.iter().flat_map(|r| &r.resource_logs) {
            let attrs = r.resource.clone().unwrap_or_default().attributes;
            for record in r.scope_logs.iter().flat_map(|s| &s.log_records) {
                out.push((attrs.clone(), record.clone()));
            }
        }
        out
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
