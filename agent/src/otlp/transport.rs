//! How OTLP requests reach the collector: gRPC (tonic) or HTTP/protobuf
//! (hyper), over plain TCP or TLS (rustls with the ring provider; the
//! system's root certificates or `ca_file`, and a client certificate for
//! mutual TLS), with the configured headers on every request and gzip
//! when asked.
//!
//! Where each signal goes ([`signal_url`]) follows the OTLP exporter
//! specification: a per-signal endpoint is used as is; the shared
//! `endpoint` is used as is over gRPC and gets `/v1/metrics` or
//! `/v1/logs` appended to its path over HTTP.

use std::{io::Write, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient,
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_client::MetricsServiceClient,
    },
};
use prost::Message;
use thiserror::Error;
use tonic::{
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tracing::debug;

use crate::config::{self, OtlpCompression, OtlpConfig, OtlpProtocol};

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("invalid endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("header {0:?} is not a valid header")]
    Header(String),
    #[error("gRPC status {code:?}: {message}")]
    Grpc { code: tonic::Code, message: String },
    #[error("HTTP request failed: {0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("reading the HTTP response: {0}")]
    Body(#[from] hyper::Error),
    #[error("building the HTTP request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("compressing the request: {0}")]
    Compress(#[from] std::io::Error),
    #[error("HTTP status {status}: {body}")]
    HttpStatus { status: u16, body: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl From<tonic::Status> for ExportError {
    fn from(status: tonic::Status) -> Self {
        Self::Grpc {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

impl ExportError {
    /// Whether trying again may help (the OTLP spec's retryable codes;
    /// transport errors and timeouts are).
    pub fn retryable(&self) -> bool {
        use tonic::Code;
        match self {
            Self::Endpoint { .. }
            | Self::Tls(_)
            | Self::Header(_)
            | Self::Request(_)
            | Self::Compress(_) => false,
            Self::Grpc { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::OutOfRange
                    | Code::DataLoss
                    | Code::Unknown
            ),
            Self::HttpStatus { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Self::Http(_) | Self::Body(_) | Self::Timeout(_) => true,
        }
    }
}

/// The two OTLP signals Sonde sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Logs,
}

impl Signal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Logs => "logs",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Metrics => "v1/metrics",
            Self::Logs => "v1/logs",
        }
    }
}

pub enum Payload {
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
}

impl Payload {
    pub fn signal(&self) -> Signal {
        match self {
            Self::Metrics(_) => Signal::Metrics,
            Self::Logs(_) => Signal::Logs,
        }
    }
}

/// Where `signal` is sent, or None when no endpoint covers it.
pub fn signal_url(config: &OtlpConfig, signal: Signal) -> Option<String> {
    let own = match signal {
        Signal::Metrics => &config.metrics_endpoint,
        Signal::Logs => &config.logs_endpoint,
    };
    if let Some(url) = own {
        return Some(url.clone());
    }
    let base = config.endpoint.as_ref()?;
    Some(match config.protocol {
        OtlpProtocol::Grpc => base.clone(),
        OtlpProtocol::HttpProtobuf => {
            format!("{}/{}", base.trim_end_matches('/'), signal.path())
        }
    })
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One signal's way to the collector.
enum Sender {
    GrpcMetrics(MetricsServiceClient<Channel>),
    GrpcLogs(LogsServiceClient<Channel>),
    /// Boxed: the client is three times the size of a gRPC one.
    Http {
        client: Box<HttpClient>,
        url: hyper::Uri,
    },
}

/// Both signals' ways, with what every request carries.
pub struct Transport {
    metrics: Option<(String, Sender)>,
    logs: Option<(String, Sender)>,
    /// `headers`, for HTTP requests and as gRPC metadata.
    headers: HeaderMap,
    metadata: MetadataMap,
    gzip: bool,
}

impl Transport {
    pub fn new(config: &OtlpConfig) -> Result<Self, ExportError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut headers = HeaderMap::new();
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers.0 {
            // Checked by the config's validation; never the value in a
            // message.
            let bad = || ExportError::Header(name.clone());
            let lower = name.to_ascii_lowercase();
            headers.insert(
                HeaderName::from_bytes(lower.as_bytes()).map_err(|_| bad())?,
                HeaderValue::from_str(value).map_err(|_| bad())?,
            );
            metadata.insert(
                MetadataKey::from_bytes(lower.as_bytes()).map_err(|_| bad())?,
                MetadataValue::try_from(value.as_str()).map_err(|_| bad())?,
            );
        }
        let mut http: Option<HttpClient> = None;
        let mut channels: Vec<(String, Channel)> = Vec::new();
        let mut sender = |signal: Signal| -> Result<Option<(String, Sender)>, ExportError> {
            let Some(url) = signal_url(config, signal) else {
                return Ok(None);
            };
            let invalid = |message: String| ExportError::Endpoint {
                endpoint: url.clone(),
                message,
            };
            let sender = match config.protocol {
                OtlpProtocol::Grpc => {
                    // One channel per collector address, shared by the
                    // signals. Lazy: the first export connects, and a
                    // channel whose collector went away reconnects on the
                    // next one.
                    let channel = match channels.iter().find(|(u, _)| *u == url) {
                        Some((_, c)) => c.clone(),
                        None => {
                            let c = grpc_channel(config, &url, timeout)?;
                            channels.push((url.clone(), c.clone()));
                            c
                        }
                    };
                    let encoding = CompressionEncoding::Gzip;
                    match signal {
                        Signal::Metrics => {
                            let mut c = MetricsServiceClient::new(channel);
                            if config.compression == OtlpCompression::Gzip {
                                c = c.send_compressed(encoding);
                            }
                            Sender::GrpcMetrics(c.accept_compressed(encoding))
                        }
                        Signal::Logs => {
                            let mut c = LogsServiceClient::new(channel);
                            if config.compression == OtlpCompression::Gzip {
                                c = c.send_compressed(encoding);
                            }
                            Sender::GrpcLogs(c.accept_compressed(encoding))
                        }
                    }
                }
                OtlpProtocol::HttpProtobuf => {
                    let client = match &http {
                        Some(c) => c.clone(),
                        None => {
                            let c = http_client(config, timeout)?;
                            http = Some(c.clone());
                            c
                        }
                    };
                    Sender::Http {
                        client: Box::new(client),
                        url: url
                            .parse()
                            .map_err(|e: hyper::http::uri::InvalidUri| invalid(e.to_string()))?,
                    }
                }
            };
            Ok(Some((url, sender)))
        };
        let metrics = sender(Signal::Metrics)?;
        let logs = sender(Signal::Logs)?;
        Ok(Self {
            metrics,
            logs,
            headers,
            metadata,
            gzip: config.compression == OtlpCompression::Gzip,
        })
    }

    /// Where `signal` goes (None: it is not exported).
    pub fn url(&self, signal: Signal) -> Option<&str> {
        match signal {
            Signal::Metrics => self.metrics.as_ref(),
            Signal::Logs => self.logs.as_ref(),
        }
        .map(|(url, _)| url.as_str())
    }

    pub async fn send(&mut self, payload: &Payload) -> Result<(), ExportError> {
        let sender = match payload.signal() {
            Signal::Metrics => self.metrics.as_mut(),
            Signal::Logs => self.logs.as_mut(),
        };
        let Some((_, sender)) = sender else {
            return Ok(());
        };
        match (sender, payload) {
            (Sender::GrpcMetrics(client), Payload::Metrics(req)) => {
                let mut request = tonic::Request::new(req.clone());
                *request.metadata_mut() = self.metadata.clone();
                let reply = client.export(request).await?.into_inner();
                if let Some(p) = reply.partial_success.filter(|p| p.rejected_data_points > 0) {
                    debug!(
                        "OTLP: collector rejected {} data points: {}",
                        p.rejected_data_points, p.error_message
                    );
                }
                Ok(())
            }
            (Sender::GrpcLogs(client), Payload::Logs(req)) => {
                let mut request = tonic::Request::new(req.clone());
                *request.metadata_mut() = self.metadata.clone();
                client.export(request).await?;
                Ok(())
            }
            (Sender::Http { client, url }, payload) => {
                let mut body = match payload {
                    Payload::Metrics(req) => req.encode_to_vec(),
                    Payload::Logs(req) => req.encode_to_vec(),
                };
                let mut request = hyper::Request::post(url.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/x-protobuf");
                if self.gzip {
                    body = gzip(&body)?;
                    request = request.header(hyper::header::CONTENT_ENCODING, "gzip");
                }
                let mut request = request.body(Full::new(Bytes::from(body)))?;
                request.headers_mut().extend(self.headers.clone());
                let response = client.request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                http_response(payload.signal(), status.as_u16(), &body)
            }
            // Built per signal in `new`: a gRPC sender only ever gets its
            // own signal.
            (Sender::GrpcMetrics(_), Payload::Logs(_))
            | (Sender::GrpcLogs(_), Payload::Metrics(_)) => Ok(()),
        }
    }
}

/// What an OTLP/HTTP collector's answer means: a 2xx is accepted (its
/// body, an Export*ServiceResponse, may report rejected points, logged;
/// an empty or undecodable one is not an error), anything else an error
/// carrying the start of the body.
pub fn http_response(signal: Signal, status: u16, body: &[u8]) -> Result<(), ExportError> {
    if !(200..300).contains(&status) {
        return Err(ExportError::HttpStatus {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned(),
        });
    }
    let rejected = match signal {
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| (p.rejected_data_points, p.error_message)),
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| (p.rejected_log_records, p.error_message)),
    };
    if let Some((rejected, message)) = rejected.filter(|(n, _)| *n > 0) {
        debug!(
            "OTLP: collector rejected {rejected} {}: {message}",
            signal.label()
        );
    }
    Ok(())
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path)
        .map_err(|e| ExportError::Tls(format!("cannot read {}: {e}", path.display())))
}

fn grpc_channel(config: &OtlpConfig, url: &str, timeout: Duration) -> Result<Channel, ExportError> {
    let invalid = |message: String| ExportError::Endpoint {
        endpoint: url.to_owned(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if is_https(url) {
        let mut tls = ClientTlsConfig::new();
        tls = match &config.ca_file {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read(path)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&config.client_cert_file, &config.client_key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ExportError::Tls(e.to_string()))?;
    }
    Ok(endpoint.connect_lazy())
}

/// rustls' ring provider: no C toolchain pieces (aws-lc-rs needs cmake
/// and a C compiler), the same one tonic's `tls-ring` uses for gRPC.
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange;
/// the classical suites it offers are what OTLP collectors speak.
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration of HTTPS exports: ring, the CA file
/// or the system's roots, and the client certificate if any.
fn rustls_config(config: &OtlpConfig) -> Result<rustls::ClientConfig, ExportError> {
    let tls = |e: String| ExportError::Tls(e);
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for cert in config::read_pem_certs(path).map_err(tls)? {
                roots
                    .add(cert)
                    .map_err(|e| tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(tls(format!(
                    "no system root certificates found ({:?}); install ca-certificates or set \
                     [otlp] ca_file",
                    found.errors
                )));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                config::read_pem_certs(cert).map_err(tls)?,
                config::read_pem_key(key).map_err(tls)?,
            )
            .map_err(|e| tls(e.to_string())),
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn http_client(config: &OtlpConfig, timeout: Duration) -> Result<HttpClient, ExportError> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    // The TLS layer decides per scheme; the TCP one must accept https URIs.
    connector.enforce_http(false);
    let needs_tls = [Signal::Metrics, Signal::Logs]
        .into_iter()
        .filter_map(|s| signal_url(config, s))
        .any(|u| is_https(&u));
    let tls = if needs_tls {
        rustls_config(config)?
    } else {
        // Never used (no https URL), but the connector wants one.
        rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ExportError::Tls(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_appends_signal_paths_to_the_shared_endpoint_only() {
        let mut c = OtlpConfig {
            endpoint: Some("https://collector:4318/otlp/".into()),
            protocol: OtlpProtocol::HttpProtobuf,
            ..Default::default()
        };
        assert_eq!(
            signal_url(&c, Signal::Metrics).as_deref(),
            Some("https://collector:4318/otlp/v1/metrics")
        );
        c.logs_endpoint = Some("https://logs:4318/custom".into());
        assert_eq!(
            signal_url(&c, Signal::Logs).as_deref(),
            Some("https://logs:4318/custom")
        );
        c.protocol = OtlpProtocol::Grpc;
        assert_eq!(
            signal_url(&c, Signal::Metrics).as_deref(),
            Some("https://collector:4318/otlp/")
        );
        c.endpoint = None;
        assert_eq!(signal_url(&c, Signal::Metrics), None);
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(ExportError::Timeout(Duration::from_secs(1)).retryable());
        assert!(ExportError::from(tonic::Status::unavailable("down")).retryable());
        assert!(!ExportError::from(tonic::Status::invalid_argument("bad")).retryable());
        assert!(!ExportError::from(tonic::Status::unauthenticated("who")).retryable());
        let status = |status| ExportError::HttpStatus {
            status,
            body: String::new(),
        };
        assert!(status(503).retryable());
        assert!(!status(400).retryable());
        assert!(!status(401).retryable());
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let body = vec![7u8; 10_000];
        let packed = gzip(&body).unwrap();
        assert!(packed.len() < 200, "{}", packed.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
