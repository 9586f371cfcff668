//! The web configuration file in exporter-toolkit's format (what
//! node_exporter and the other Prometheus exporters read with
//! `--web.config.file`), so an operator reuses the file they have:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: clients-ca.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...
//! ```
//!
//! Relative paths are relative to the file's directory, as in
//! exporter-toolkit. Unknown keys are refused; keys exporter-toolkit knows
//! that Sonde cannot honour safely are refused too, naming the key, rather
//! than ignored: `client_allowed_sans`, and the client-auth types that take
//! a certificate without verifying it. Cipher suites and curves are
//! rustls's (all of them modern); the Go names are accepted and ignored.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::http::{HeaderName, HeaderValue};
use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion, server::WebPkiClientVerifier,
    version::TLS12, version::TLS13,
};
use serde::Deserialize;
use thiserror::Error;

use crate::config::{read_pem_certs, read_pem_key};

#[derive(Debug, Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid web config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpServerFile>,
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_allowed_sans: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Vec<String>,
    curve_preferences: Vec<String>,
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HttpServerFile {
    /// Sonde serves HTTP/1.1 only; accepted for compatibility.
    http2: Option<bool>,
    headers: BTreeMap<String, String>,
}

/// Response headers exporter-toolkit lets the file set.
const HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// How clients must present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates asked for.
    None,
    /// Verified against the client CA when given (VerifyClientCertIfGiven).
    IfGiven,
    /// Required and verified (RequireAndVerifyClientCert).
    Required,
}

/// A validated web configuration: what the server serves with.
#[derive(Clone)]
pub struct WebConfig {
    /// Where it came from (None: no file, plain HTTP).
    pub path: Option<PathBuf>,
    /// TLS, when `tls_server_config` is set.
    pub tls: Option<Arc<ServerConfig>>,
    pub client_auth: ClientAuth,
    /// User → bcrypt hash; empty: no basic auth.
    pub users: BTreeMap<String, String>,
    /// Extra response headers (`http_server_config.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .field("client_auth", &self.client_auth)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Plain HTTP, no authentication.
    pub fn none() -> Self {
        Self {
            path: None,
            tls: None,
            client_auth: ClientAuth::None,
            users: BTreeMap::new(),
            headers: Vec::new(),
        }
    }

    /// Reads and validates `path`; the error names the key at fault.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text`, the contents of `path` (relative certificate
    /// paths are resolved against its directory); what `load` does after
    /// reading the file, and what the `web_config` fuzz target calls.
    pub fn parse(text: &str, path: &Path) -> Result<Self, WebConfigError> {
        let invalid = |key: &str, message: String| WebConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        // An empty file is valid (exporter-toolkit: no TLS, no auth).
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text)).map_err(
                |e: serde_path_to_error::Error<serde_norway::Error>| {
                    let key = e.path().to_string();
                    let inner = e.into_inner().to_string();
                    // serde names an unknown field in the message itself.
                    let key = if key == "." || key.is_empty() {
                        inner.split('`').nth(1).unwrap_or("(top level)").to_owned()
                    } else {
                        key
                    };
                    invalid(&key, inner)
                },
            )?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut users = BTreeMap::new();
        for (user, hash) in file.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                return Err(invalid(
                    "basic_auth_users",
                    format!("{user:?} is not a user name (not empty, no ':')"),
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(invalid(
                    &format!("basic_auth_users.{user}"),
                    "is not a bcrypt hash ($2y$10$…, as `htpasswd -nBC 10 USER` prints)".into(),
                ));
            }
            users.insert(user, hash);
        }
        let mut headers = Vec::new();
        if let Some(http) = file.http_server_config {
            let _ = http.http2;
            for (name, value) in http.headers {
                let key = format!("http_server_config.headers.{name}");
                if !HEADERS.iter().any(|h| h.eq_ignore_ascii_case(&name)) {
                    return Err(invalid(
                        &key,
                        format!("not a header the file may set ({})", HEADERS.join(", ")),
                    ));
                }
                let name = HeaderName::try_from(name.as_str())
                    .map_err(|e| invalid(&key, e.to_string()))?;
                let value = HeaderValue::try_from(value.as_str())
                    .map_err(|e| invalid(&key, e.to_string()))?;
                headers.push((name, value));
            }
        }
        let (tls, client_auth) = match file.tls_server_config {
            None => (None, ClientAuth::None),
            Some(tls) => {
                let (config, auth) = tls_config(tls, base).map_err(|(key, message)| {
                    invalid(&format!("tls_server_config.{key}"), message)
                })?;
                (Some(Arc::new(config)), auth)
            }
        };
        Ok(Self {
            path: Some(path.to_owned()),
            tls,
            client_auth,
            users,
            headers,
        })
    }
}

fn version(key: &'static str, name: &str) -> Result<u8, (&'static str, String)> {
    match name {
        // rustls speaks 1.2 and 1.3 only: an older minimum is 1.2.
        "TLS10" | "TLS11" | "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        other => Err((
            key,
            format!("{other:?}: expected TLS10, TLS11, TLS12 or TLS13"),
        )),
    }
}

/// rustls' ring provider, as the OTLP exporter uses (no C toolchain
/// pieces); deprecated in 0.23.48 for lacking post-quantum key exchange,
/// which scrapers do not speak yet.
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls's server configuration for `tls_server_config`, or (key, why).
fn tls_config(
    tls: TlsFile,
    base: &Path,
) -> Result<(ServerConfig, ClientAuth), (&'static str, String)> {
    let resolve = |p: &Path| base.join(p);
    let cert_file = tls
        .cert_file
        .as_deref()
        .ok_or(("cert_file", "is required with tls_server_config".to_owned()))?;
    let key_file = tls
        .key_file
        .as_deref()
        .ok_or(("key_file", "is required with tls_server_config".to_owned()))?;
    let certs = read_pem_certs(&resolve(cert_file)).map_err(|e| ("cert_file", e))?;
    let key = read_pem_key(&resolve(key_file)).map_err(|e| ("key_file", e))?;
    if !tls.client_allowed_sans.is_empty() {
        return Err((
            "client_allowed_sans",
            "is not supported by Sonde; restrict clients with client_ca_file".into(),
        ));
    }
    let _ = (
        tls.cipher_suites,
        tls.curve_preferences,
        tls.prefer_server_cipher_suites,
    );
    let min = match &tls.min_version {
        Some(v) => version("min_version", v)?,
        None => 12,
    };
    let max = match &tls.max_version {
        Some(v) => version("max_version", v)?,
        None => 13,
    };
    if min > max {
        return Err(("min_version", "is above max_version".into()));
    }
    let versions: Vec<&'static SupportedProtocolVersion> = [(12, &TLS12), (13, &TLS13)]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, p)| p)
        .collect();
    let auth = match tls.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::IfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::Required,
        t @ ("RequestClientCert" | "RequireAnyClientCert") => {
            return Err((
                "client_auth_type",
                format!(
                    "{t} takes client certificates without verifying them, which Sonde does not \
                     do; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with \
                     client_ca_file"
                ),
            ));
        }
        other => {
            return Err((
                "client_auth_type",
                format!(
                    "{other:?}: expected NoClientCert, VerifyClientCertIfGiven or \
                     RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    let provider = ring_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| ("min_version", e.to_string()))?;
    let builder = match (auth, &tls.client_ca_file) {
        (ClientAuth::None, None) => builder.with_no_client_auth(),
        (ClientAuth::None, Some(_)) => {
            return Err((
                "client_ca_file",
                "is set but client_auth_type is NoClientCert: say how clients must present \
                 certificates (RequireAndVerifyClientCert)"
                    .into(),
            ));
        }
        (_, None) => {
            return Err((
                "client_ca_file",
                "is required to verify client certificates".into(),
            ));
        }
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in read_pem_certs(&resolve(ca)).map_err(|e| ("client_ca_file", e))? {
                roots
                    .add(cert)
                    .map_err(|e| ("client_ca_file", format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::IfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| ("client_ca_file", e.to_string()))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("key_file", format!("does not match cert_file: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, WebConfigError> {
        let dir = std::env::temp_dir().join(format!("sonde-web-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.yml"));
        std::fs::write(&path, text).unwrap();
        WebConfig::load(&path)
    }

    #[test]
    fn basic_auth_users_and_empty_file() {
        // A low cost keeps the test fast.
        let hash = bcrypt::hash("secret", 4).unwrap();
        let config = load(&format!("basic_auth_users:\n  prom: \"{hash}\"\n")).unwrap();
        assert_eq!(config.users["prom"], hash);
        assert!(config.tls.is_none());
        let config = load("").unwrap();
        assert!(config.users.is_empty() && config.tls.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("basic_auth_user: {}", "basic_auth_user"),
            (
                "basic_auth_users:\n  prom: notahash",
                "basic_auth_users.prom",
            ),
            (
                "tls_server_config:\n  key_file: /x",
                "tls_server_config.cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /x",
                "tls_server_config.cert_file",
            ),
            ("tls_server_config:\n  certfile: /x", "certfile"),
            ("tls_server_config: [1]", "tls_server_config"),
            (
                "http_server_config:\n  headers:\n    Server: x",
                "http_server_config.headers.Server",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = WebConfig::load(Path::new("/nonexistent/web.yml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/web.yml"), "{err}");
    }
}
