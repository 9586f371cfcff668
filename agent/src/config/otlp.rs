//! The `[otlp]` settings: their types and checks, and the OpenTelemetry
//! SDK's standard environment variables for them (`OTEL_EXPORTER_OTLP_*`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), so that Sonde drops
//! into a stack configured the usual way. Imports nothing from the rest
//! of the configuration; [`super::Config::load`] calls [`resolve`] and
//! [`OtlpConfig::validate`] and turns their errors into `ConfigError`s.
//!
//! Precedence, per setting: the config file, then `SONDE_OTLP__*`, then
//! the `OTEL_*` variable, then the default. An empty variable counts as
//! unset (as the specification says). Two settings go as one: the
//! per-signal `OTEL_EXPORTER_OTLP_{METRICS,LOGS}_ENDPOINT` are ignored
//! when the config file sets `endpoint` (the file names the collector;
//! a variable must not send half of the data elsewhere).
//!
//! Lists (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`) are
//! W3C Baggage without properties: `key1=value1,key2=value2`, keys and
//! values percent-decoded, blanks around them trimmed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// An invalid `[otlp]` value: the key, and why (naming the variable when
/// the value came from one).
#[derive(Debug)]
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
}

/// An `OTEL_*` variable that cannot be read.
#[derive(Debug)]
pub struct EnvError {
    pub var: String,
    pub message: String,
}

/// How OTLP data is sent.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// gRPC (`MetricsService/Export`), usually port 4317.
    #[serde(rename = "grpc")]
    Grpc,
    /// Protobuf over HTTP POST to `/v1/metrics` and `/v1/logs`, usually
    /// port 4318.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The config and `OTEL_EXPORTER_OTLP_PROTOCOL` value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Compression of OTLP requests.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OtlpCompression {
    #[default]
    None,
    /// gzip: `grpc-encoding: gzip` over gRPC, `Content-Encoding: gzip`
    /// over HTTP.
    Gzip,
}

impl OtlpCompression {
    /// The config and `OTEL_EXPORTER_OTLP_COMPRESSION` value.
    pub fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
        }
    }
}

/// Headers sent with every OTLP export (`authorization`, `x-api-key`).
/// Their values are secrets: `Debug` and `Serialize` (the status
/// endpoint, logs) show the names only, each value as `<redacted>`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct OtlpHeaders(pub BTreeMap<String, String>);

/// What a redacted header value reads as.
pub const REDACTED: &str = "<redacted>";

impl OtlpHeaders {
    /// The names, for logs.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl std::fmt::Debug for OtlpHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, REDACTED)))
            .finish()
    }
}

impl Serialize for OtlpHeaders {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.keys().map(|k| (k, REDACTED)))
    }
}

/// Where one `[otlp]` setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The config file.
    Config,
    /// This environment variable (`SONDE_OTLP__*` or `OTEL_*`).
    Env(String),
    /// Neither: the built-in default.
    Default,
}

impl Source {
    pub fn label(&self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Env(_) => "env",
            Source::Default => "default",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Env(var) => write!(f, "env {var}"),
            other => f.write_str(other.label()),
        }
    }
}

/// The `[otlp]` settings, each with where its value came from
/// ([`resolve`] fills it in, from [`super::Config::load`]).
///
/// Metadata about the values, not a setting: two configurations with the
/// same values are equal whatever their origin (the shipped file equals
/// the defaults; a reload that moves a value from a variable into the
/// file changes nothing).
#[derive(Debug, Clone, Default)]
pub struct OtlpSources(BTreeMap<&'static str, Source>);

impl PartialEq for OtlpSources {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl OtlpSources {
    /// Where `key` came from (a key never set is a default).
    pub fn get(&self, key: &str) -> &Source {
        self.0.get(key).unwrap_or(&Source::Default)
    }

    pub fn set(&mut self, key: &'static str, source: Source) {
        self.0.insert(key, source);
    }

    /// True when nothing was ever resolved (a config built in code).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `key=source` for every setting, as the startup log shows it.
    pub fn summary(&self) -> String {
        KEYS.iter()
            .map(|k| format!("{k}={}", self.get(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Serialize for OtlpSources {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(KEYS.iter().map(|k| (k, self.get(k).label())))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector address, `http://HOST:PORT` or `https://HOST:PORT` (with
    /// a path prefix if the collector has one). Over HTTP, `/v1/metrics`
    /// and `/v1/logs` are appended. Unset (and no per-signal endpoint): no
    /// OTLP export.
    pub endpoint: Option<String>,
    /// Full URL for metrics only, used as is (no path appended).
    pub metrics_endpoint: Option<String>,
    /// Full URL for logs (anomalies) only, used as is.
    pub logs_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// Sent with every export; the values never appear in logs or status.
    pub headers: OtlpHeaders,
    /// `none` or `gzip`.
    pub compression: OtlpCompression,
    /// PEM file of the CA(s) that signed the collector's certificate, for
    /// `https` endpoints; trusted instead of the system's roots. Unset:
    /// the system's root certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain and private key for mutual TLS (both or
    /// neither).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// How often every metric is exported (and new anomalies as logs).
    pub interval_ms: u64,
    /// Timeout of one export attempt (failed attempts are retried with
    /// backoff, at most 3 per interval).
    pub timeout_ms: u64,
    /// The resource's `service.name` (unset: `service.name` from
    /// `resource_attributes`, else `sonde`).
    pub service_name: Option<String>,
    /// Extra resource attributes (`deployment.environment`,
    /// `k8s.cluster.name`); they replace Sonde's own of the same name.
    pub resource_attributes: BTreeMap<String, String>,
    /// Where each setting came from: reported by /api/v1/status and the
    /// startup log; never read from the file.
    #[serde(skip_deserializing, skip_serializing_if = "OtlpSources::is_empty")]
    pub sources: OtlpSources,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            metrics_endpoint: None,
            logs_endpoint: None,
            protocol: OtlpProtocol::Grpc,
            headers: OtlpHeaders::default(),
            compression: OtlpCompression::None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            interval_ms: 10_000,
            timeout_ms: 5_000,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            sources: OtlpSources::default(),
        }
    }
}

impl OtlpConfig {
    /// Whether anything is to be exported (some endpoint is set).
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some() || self.metrics_endpoint.is_some() || self.logs_endpoint.is_some()
    }

    /// An invalid-value error for `key`, naming the variable it came from
    /// when it came from the environment.
    fn invalid(&self, key: &'static str, message: String) -> Invalid {
        let message = match self.sources.get(key.trim_start_matches("otlp.")) {
            Source::Env(var) => format!("{message} (set by {var})"),
            _ => message,
        };
        Invalid { key, message }
    }

    /// Checks every value, reading the PEM files.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, endpoint) in [
            ("otlp.endpoint", &self.endpoint),
            ("otlp.metrics_endpoint", &self.metrics_endpoint),
            ("otlp.logs_endpoint", &self.logs_endpoint),
        ] {
            if let Some(endpoint) = endpoint
                && !endpoint.parse::<hyper::Uri>().is_ok_and(|uri| {
                    matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
                })
            {
                return Err(self.invalid(
                    key,
                    format!("{endpoint:?}: expected http://HOST:PORT or https://HOST:PORT"),
                ));
            }
        }
        if self.interval_ms < 100 {
            return Err(self.invalid("otlp.interval_ms", "must be at least 100".into()));
        }
        if self.timeout_ms == 0 {
            return Err(self.invalid("otlp.timeout_ms", "must be at least 1".into()));
        }
        for (name, value) in &self.headers.0 {
            // Never the value in the message: it is a secret.
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || name.ends_with("-bin")
            {
                return Err(self.invalid(
                    "otlp.headers",
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if hyper::header::HeaderValue::from_str(value).is_err() {
                return Err(self.invalid(
                    "otlp.headers",
                    format!(
                        "the value of {name:?} is not a valid header value (printable ASCII; \
                         percent-encode others in OTEL_EXPORTER_OTLP_HEADERS)"
                    ),
                ));
            }
        }
        if self.resource_attributes.keys().any(String::is_empty) {
            return Err(self.invalid(
                "otlp.resource_attributes",
                "an attribute has an empty name".into(),
            ));
        }
        if let Some(path) = &self.ca_file {
            read_pem_certs(path).map_err(|m| self.invalid("otlp.ca_file", m))?;
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                read_pem_certs(cert).map_err(|m| self.invalid("otlp.client_cert_file", m))?;
                read_pem_key(key).map_err(|m| self.invalid("otlp.client_key_file", m))?;
            }
            (Some(_), None) => {
                return Err(self.invalid(
                    "otlp.client_key_file",
                    "must be set with client_cert_file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    "otlp.client_cert_file",
                    "must be set with client_key_file".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The certificates of a PEM file (at least one), or why not.
pub fn read_pem_certs(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file, or why not.
pub fn read_pem_key(path: &Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, String> {
    use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{}: no PEM private key in it: {e}", path.display()))
}

/// Every `[otlp]` setting, in the order status and logs list them.
pub const KEYS: &[&str] = &[
    "endpoint",
    "metrics_endpoint",
    "logs_endpoint",
    "protocol",
    "headers",
    "compression",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "interval_ms",
    "timeout_ms",
    "service_name",
    "resource_attributes",
];

/// The standard variable of each setting.
pub const VARIABLES: &[(&str, &str)] = &[
    ("endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ("metrics_endpoint", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
    ("logs_endpoint", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
    ("protocol", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ("headers", "OTEL_EXPORTER_OTLP_HEADERS"),
    ("compression", "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ("ca_file", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
    ("client_cert_file", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
    ("client_key_file", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
    ("interval_ms", "OTEL_METRIC_EXPORT_INTERVAL"),
    ("timeout_ms", "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ("service_name", "OTEL_SERVICE_NAME"),
    ("resource_attributes", "OTEL_RESOURCE_ATTRIBUTES"),
];

/// Fills in `otlp` from the `OTEL_*` variables in `env` for every setting
/// that is in neither `in_file` (keys of the file's `[otlp]` table) nor
/// `in_sonde_env` (the same after the `SONDE_*` overrides), and records
/// each setting's source in `otlp.sources`.
pub fn resolve(
    otlp: &mut OtlpConfig,
    in_file: &BTreeSet<String>,
    in_sonde_env: &BTreeSet<String>,
    env: &[(String, String)],
) -> Result<(), EnvError> {
    let env: BTreeMap<&str, &str> = env
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let endpoint_in_file = in_file.contains("endpoint");
    for &(key, var) in VARIABLES {
        let source = if in_file.contains(key) {
            Source::Config
        } else if in_sonde_env.contains(key) {
            Source::Env(format!("SONDE_OTLP__{}", key.to_ascii_uppercase()))
        } else if let Some(value) = env.get(var)
            && !(endpoint_in_file && matches!(key, "metrics_endpoint" | "logs_endpoint"))
        {
            apply(otlp, key, value.trim()).map_err(|message| EnvError {
                var: var.to_owned(),
                message,
            })?;
            Source::Env(var.to_owned())
        } else {
            Source::Default
        };
        otlp.sources.set(key, source);
    }
    Ok(())
}

/// Sets `key` from the text of its variable.
fn apply(otlp: &mut OtlpConfig, key: &str, value: &str) -> Result<(), String> {
    let millis = |value: &str| {
        value
            .parse::<u64>()
            .map_err(|_| format!("{value:?} is not a number of milliseconds"))
    };
    match key {
        "endpoint" => otlp.endpoint = Some(value.to_owned()),
        "metrics_endpoint" => otlp.metrics_endpoint = Some(value.to_owned()),
        "logs_endpoint" => otlp.logs_endpoint = Some(value.to_owned()),
        "protocol" => otlp.protocol = protocol(value)?,
        "headers" => {
            otlp.headers = OtlpHeaders(
                parse_list(value)?
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
            )
        }
        "compression" => {
            otlp.compression = match value {
                "gzip" => OtlpCompression::Gzip,
                "none" => OtlpCompression::None,
                other => return Err(format!("{other:?}: expected gzip or none")),
            }
        }
        "ca_file" => otlp.ca_file = Some(PathBuf::from(value)),
        "client_cert_file" => otlp.client_cert_file = Some(PathBuf::from(value)),
        "client_key_file" => otlp.client_key_file = Some(PathBuf::from(value)),
        "interval_ms" => otlp.interval_ms = millis(value)?,
        "timeout_ms" => otlp.timeout_ms = millis(value)?,
        "service_name" => otlp.service_name = Some(value.to_owned()),
        "resource_attributes" => otlp.resource_attributes = parse_list(value)?,
        other => unreachable!("no variable for otlp.{other}"),
    }
    Ok(())
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`'s values Sonde speaks.
fn protocol(value: &str) -> Result<OtlpProtocol, String> {
    match value {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => Err("\"http/json\" is not supported: use grpc or http/protobuf".into()),
        other => Err(format!("{other:?}: expected grpc or http/protobuf")),
    }
}

/// `k1=v1,k2=v2` with percent-encoded keys and values (W3C Baggage
/// without properties). Errors name the entry by position and key, never
/// by value (header values are secrets).
pub fn parse_list(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, entry) in text.split(',').enumerate() {
        let n = i + 1;
        if entry.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!(
                "entry {n} is not key=value (expected k1=v1,k2=v2, percent-encoded)"
            ));
        };
        let key = decode(key.trim()).map_err(|e| format!("entry {n}: the key {e}"))?;
        if key.is_empty() {
            return Err(format!("entry {n} has an empty key"));
        }
        let value =
            decode(value.trim()).map_err(|e| format!("entry {n} ({key}): the value {e}"))?;
        out.insert(key, value);
    }
    Ok(out)
}

fn decode(text: &str) -> Result<String, String> {
    // A `%` not followed by two hex digits is malformed, not literal.
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('%') {
        if !bytes
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            return Err("has a % not followed by two hex digits".into());
        }
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "is not UTF-8 once percent-decoded".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keys(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn lists_are_baggage_style_and_percent_decoded() {
        let list = parse_list(
            " authorization = Bearer%20abc%3D%3D , x-api-key=k%2Cey,,empty=,utf8=caf%C3%A9",
        )
        .unwrap();
        assert_eq!(list["authorization"], "Bearer abc==");
        assert_eq!(list["x-api-key"], "k,ey");
        assert_eq!(list["empty"], "");
        assert_eq!(list["utf8"], "café");
        assert_eq!(list.len(), 4);
        // `=` inside a value (unencoded) stays in the value.
        assert_eq!(parse_list("a=b=c").unwrap()["a"], "b=c");
        assert!(parse_list("").unwrap().is_empty());
    }

    #[test]
    fn malformed_lists_name_the_entry_never_the_value() {
        let err = parse_list("a=1,secretvalue").unwrap_err();
        assert!(err.contains("entry 2"), "{err}");
        assert!(!err.contains("secretvalue"), "{err}");
        let err = parse_list("=x").unwrap_err();
        assert!(err.contains("empty key"), "{err}");
        let err = parse_list("k=sec%zzret").unwrap_err();
        assert!(err.contains("entry 1 (k)") && !err.contains("sec"), "{err}");
        assert!(parse_list("k=%C3%28").is_err(), "not UTF-8");
    }

    #[test]
    fn variables_fill_what_the_file_leaves_unset() {
        let mut otlp = OtlpConfig::default();
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20x"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
            ("OTEL_SERVICE_NAME", "sonde-eu"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", ""),
        ]);
        resolve(
            &mut otlp,
            &keys(&["timeout_ms"]),
            &keys(&["timeout_ms"]),
            &vars,
        )
        .unwrap();
        assert_eq!(otlp.endpoint.as_deref(), Some("https://collector:4318"));
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.headers.0["authorization"], "Bearer x");
        assert_eq!(otlp.compression, OtlpCompression::Gzip);
        assert_eq!(otlp.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(otlp.timeout_ms, 5000, "the file's timeout wins");
        assert_eq!(otlp.service_name.as_deref(), Some("sonde-eu"));
        assert_eq!(otlp.resource_attributes["deployment.environment"], "prod");
        assert_eq!(otlp.logs_endpoint, None, "empty is unset");
        let s = &otlp.sources;
        assert_eq!(
            s.get("endpoint"),
            &Source::Env("OTEL_EXPORTER_OTLP_ENDPOINT".into())
        );
        assert_eq!(s.get("timeout_ms"), &Source::Config);
        assert_eq!(s.get("logs_endpoint"), &Source::Default);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["endpoint"], "env");
        assert_eq!(json["timeout_ms"], "config");
        assert_eq!(json["interval_ms"], "default");
        // Sonde's own variable counts as the environment too.
        let mut otlp = OtlpConfig::default();
        resolve(&mut otlp, &keys(&[]), &keys(&["endpoint"]), &vars).unwrap();
        assert_eq!(
            otlp.sources.get("endpoint"),
            &Source::Env("SONDE_OTLP__ENDPOINT".into())
        );
        assert_eq!(otlp.endpoint, None, "left to the SONDE_ override");
    }

    #[test]
    fn signal_endpoints_do_not_override_the_files_endpoint() {
        let vars = env(&[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://elsewhere:1")]);
        let mut otlp = OtlpConfig::default();
        resolve(&mut otlp, &keys(&["endpoint"]), &keys(&["endpoint"]), &vars).unwrap();
        assert_eq!(otlp.metrics_endpoint, None);
        let mut otlp = OtlpConfig::default();
        resolve(&mut otlp, &keys(&[]), &keys(&[]), &vars).unwrap();
        assert_eq!(otlp.metrics_endpoint.as_deref(), Some("http://elsewhere:1"));
        assert!(otlp.enabled());
    }

    #[test]
    fn bad_variables_are_named() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "no-equals-sign"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s"),
        ] {
            let mut otlp = OtlpConfig::default();
            let err =
                resolve(&mut otlp, &keys(&[]), &keys(&[]), &env(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}: {err:?}");
        }
    }
}
