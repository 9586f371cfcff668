//! Who may see what. Every endpoint is one of three kinds:
//!
//! - open: `/`, `/health/*` (kubelet probes; they name components and
//!   their state, nothing about processes, flows or configuration);
//! - protected: `/metrics` and every `GET /api/v1/…` (processes, flows,
//!   configuration): with `basic_auth_users` configured they need valid
//!   credentials (401 otherwise), as in exporter-toolkit;
//! - admin: anything that changes state (every method but GET and HEAD,
//!   and `/debug/*`): on top of the above, answered only to a client that
//!   authenticated (valid basic auth, or a client certificate the client
//!   CA verified), to loopback, or over the admin socket; 403 otherwise,
//!   saying which of those would be accepted.
//!
//! Connections over the admin socket (mode 0600) are trusted as local root.
//! bcrypt is slow on purpose (tens to hundreds of ms): successful checks
//! are remembered (SHA-256 of user, password and hash), so a scrape every
//! 15 s costs one bcrypt, not one per scrape; checks run on the blocking
//! pool, at most [`BCRYPT_AT_ONCE`] at a time, never on the server's
//! runtime thread.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, RwLock},
};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use tokio::sync::Semaphore;

use super::web_config::{ClientAuth, WebConfig};

/// bcrypt checks running at once, at most: a password-guessing flood costs
/// at most this many cores.
pub const BCRYPT_AT_ONCE: usize = 2;
/// Remembered successful checks; forgotten all at once when full.
const VERIFIED_MAX: usize = 256;

/// How a connection reached the server; each request on it carries this.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address; None over the admin socket.
    pub addr: Option<SocketAddr>,
    /// It presented a certificate that the client CA verified.
    pub verified_cert: bool,
    /// Taken beyond `[http] max_connections`: health endpoints only.
    pub overflow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    Open,
    Protected,
    Admin,
}

/// What a request would expose or change.
pub fn exposure(method: &Method, path: &str) -> Exposure {
    let open = matches!(
        path,
        "/" | "/health"
            | "/health/live"
            | "/liveness"
            | "/health/ready"
            | "/readiness"
            | "/health/startup"
    );
    let reading = method == Method::GET || method == Method::HEAD;
    if path.starts_with("/debug/") || !reading {
        Exposure::Admin
    } else if open {
        Exposure::Open
    } else {
        Exposure::Protected
    }
}

/// A web configuration in force, with the checks it has seen succeed.
pub struct Active {
    pub config: WebConfig,
    verified: Mutex<HashSet<[u8; 32]>>,
    /// A hash of the users' cost to check unknown users against, so their
    /// answer takes as long as a wrong password's.
    decoy: OnceLock<String>,
}

impl Active {
    fn new(config: WebConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            verified: Mutex::default(),
            decoy: OnceLock::new(),
        })
    }
}

/// The access policy the middleware applies; shared with the server (TLS)
/// and SIGHUP (reload).
pub struct Access {
    active: RwLock<Arc<Active>>,
    admin_socket: Option<PathBuf>,
    max_connections: usize,
    bcrypt: Semaphore,
    pub stats: Arc<crate::serving::Stats>,
}

impl Access {
    pub fn new(
        config: WebConfig,
        admin_socket: Option<PathBuf>,
        max_connections: usize,
        stats: Arc<crate::serving::Stats>,
    ) -> Self {
        Self {
            active: RwLock::new(Active::new(config)),
            admin_socket,
            max_connections,
            bcrypt: Semaphore::new(BCRYPT_AT_ONCE),
            stats,
        }
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a new configuration in force (new connections and requests
    /// follow it; remembered checks are forgotten).
    pub fn replace(&self, config: WebConfig) {
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Active::new(config);
    }

    /// Whether `header` carries a configured user's right password.
    async fn basic_auth(&self, active: &Arc<Active>, header: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = header.and_then(credentials) else {
            return false;
        };
        let hash = active.config.users.get(&user).cloned();
        let key = |hash: &str| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for part in [user.as_bytes(), password.as_bytes(), hash.as_bytes()] {
                ctx.update(&(part.len() as u64).to_le_bytes());
                ctx.update(part);
            }
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.finish().as_ref());
            out
        };
        if let Some(hash) = &hash
            && active
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key(hash))
        {
            return true;
        }
        let Ok(_slot) = self.bcrypt.acquire().await else {
            return false;
        };
        let remembered = hash.as_deref().map(key);
        let checking = active.clone();
        // Unknown users are checked against a decoy hash (made once, on
        // the blocking pool too), so they take as long as a wrong password.
        let right = tokio::task::spawn_blocking(move || {
            let against = match &hash {
                Some(h) => h.as_str(),
                None => checking.decoy.get_or_init(|| decoy(&checking.config)),
            };
            bcrypt::verify(password, against).unwrap_or(false) && hash.is_some()
        })
        .await
        .unwrap_or(false);
        if right && let Some(remembered) = remembered {
            let mut verified = active.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(remembered);
        }
        right
    }

    /// What would let a refused client in, for the 403.
    fn would_accept(&self, config: &WebConfig) -> Vec<String> {
        let mut ways = Vec::new();
        if !config.users.is_empty() {
            ways.push("valid basic auth credentials (basic_auth_users)".to_owned());
        }
        if config.client_auth != ClientAuth::None {
            ways.push("a client certificate signed by the client CA (client_ca_file)".to_owned());
        }
        ways.push("a connection from loopback".to_owned());
        match &self.admin_socket {
            Some(path) => ways.push(format!("the admin socket {}", path.display())),
            None => ways.push("the admin socket ([http] admin_socket, not configured)".to_owned()),
        }
        ways
    }
}

/// (user, password) of a `Basic` Authorization header.
fn credentials(header: &HeaderValue) -> Option<(String, String)> {
    let value = header.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A hash of a random password at the cost of the configured users'.
fn decoy(config: &WebConfig) -> String {
    let cost = config
        .users
        .values()
        .find_map(|h| h.parse::<bcrypt::HashParts>().ok())
        .map_or(bcrypt::DEFAULT_COST, |p| p.get_cost());
    let password: [u8; 16] = std::array::from_fn(|i| (crate::time::monotonic_ns() >> i) as u8);
    bcrypt::hash(password, cost).unwrap_or_default()
}

fn answer(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The middleware: refuses what the peer may not see or change, then adds
/// the configured response headers.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    // Fail closed: a request without connection facts is a remote stranger.
    let peer = request.extensions().get::<Peer>().cloned().unwrap_or(Peer {
        addr: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
        verified_cert: false,
        overflow: false,
    });
    let exposure = exposure(request.method(), request.uri().path());
    if peer.overflow && exposure != Exposure::Open {
        let mut response = answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "connection limit reached ([http] max_connections = {}); only /health/* is \
                 answered beyond it",
                access.max_connections
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        access.stats.refused(StatusCode::SERVICE_UNAVAILABLE);
        return response;
    }
    let active = access.current();
    let local_socket = peer.addr.is_none();
    let mut authenticated = peer.verified_cert;
    if exposure != Exposure::Open && !active.config.users.is_empty() && !local_socket {
        if access
            .basic_auth(&active, request.headers().get(header::AUTHORIZATION))
            .await
        {
            authenticated = true;
        } else {
            let mut response = answer(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs basic auth credentials".into(),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sonde\", charset=\"UTF-8\""),
            );
            access.stats.refused(StatusCode::UNAUTHORIZED);
            return response;
        }
    }
    let loopback = peer
        .addr
        .is_some_and(|a| a.ip().to_canonical().is_loopback());
    if exposure == Exposure::Admin && !(authenticated || loopback || local_socket) {
        let ways = access.would_accept(&active.config);
        access.stats.refused(StatusCode::FORBIDDEN);
        return answer(
            StatusCode::FORBIDDEN,
            format!(
                "{} {} changes the agent's state; it is answered only to {}",
                request.method(),
                request.uri().path(),
                ways.join(", or ")
            ),
        );
    }
    let mut response = next.run(request).await;
    for (name, value) in &active.config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_classified() {
        let get = Method::GET;
        assert_eq!(exposure(&get, "/health/ready"), Exposure::Open);
        assert_eq!(exposure(&get, "/metrics"), Exposure::Protected);
        assert_eq!(exposure(&get, "/api/v1/events"), Exposure::Protected);
        assert_eq!(exposure(&get, "/nonexistent"), Exposure::Protected);
        assert_eq!(
            exposure(&Method::POST, "/api/v1/anomalies/3/feedback"),
            Exposure::Admin
        );
        assert_eq!(exposure(&Method::POST, "/health/ready"), Exposure::Admin);
        assert_eq!(exposure(&get, "/debug/fail"), Exposure::Admin);
    }

    #[test]
    fn basic_credentials_are_parsed() {
        let h = HeaderValue::from_static("Basic cHJvbTpzZTpjcmV0"); // prom:se:cret
        assert_eq!(credentials(&h), Some(("prom".into(), "se:cret".into())));
        assert_eq!(credentials(&HeaderValue::from_static("Bearer x")), None);
        assert_eq!(credentials(&HeaderValue::from_static("Basic !!")), None);
    }

    /// What the policy answers `method path` from `peer` (with `auth` as
    /// the Authorization header), on a router whose every route says 200.
    async fn status(
        access: &Arc<Access>,
        peer: Option<Peer>,
        method: Method,
        path: &str,
        auth: Option<&str>,
    ) -> StatusCode {
        use tower::ServiceExt;
        let router = axum::Router::new()
            .fallback(|| async { "ok" })
            .layer(axum::middleware::from_fn_with_state(access.clone(), guard));
        let mut request = Request::builder().method(method).uri(path);
        if let Some(auth) = auth {
            let encoded = base64::engine::general_purpose::STANDARD.encode(auth);
            request = request.header(header::AUTHORIZATION, format!("Basic {encoded}"));
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        router.oneshot(request).await.unwrap().status()
    }

    fn peer(addr: &str, verified_cert: bool) -> Option<Peer> {
        Some(Peer {
            addr: Some(addr.parse().unwrap()),
            verified_cert,
            overflow: false,
        })
    }

    #[tokio::test]
    async fn state_changes_need_auth_loopback_or_the_socket() {
        let feedback = "/api/v1/anomalies/1/feedback";
        let remote = || peer("192.0.2.7:40000", false);
        // No web config: reads open, changes from loopback or the socket.
        let open = Arc::new(Access::new(WebConfig::none(), None, 1, Arc::default()));
        let socket = Some(Peer {
            addr: None,
            verified_cert: false,
            overflow: false,
        });
        for (who, want) in [
            (remote(), StatusCode::FORBIDDEN),
            (None, StatusCode::FORBIDDEN),
            (peer("127.0.0.1:1", false), StatusCode::OK),
            (peer("[::1]:1", false), StatusCode::OK),
            (peer("[::ffff:127.0.0.1]:1", false), StatusCode::OK),
            (socket.clone(), StatusCode::OK),
            (peer("192.0.2.7:40000", true), StatusCode::OK),
        ] {
            let got = status(&open, who.clone(), Method::POST, feedback, None).await;
            assert_eq!(got, want, "{who:?}");
        }
        assert_eq!(
            status(&open, remote(), Method::GET, "/metrics", None).await,
            StatusCode::OK
        );
        assert_eq!(open.stats.refusals().find(|(c, _)| *c == 403).unwrap().1, 2);
        // Basic auth: reads need it (but health), and it lets a remote
        // client change state.
        let mut config = WebConfig::none();
        config
            .users
            .insert("op".into(), bcrypt::hash("pw", 4).unwrap());
        let auth = Arc::new(Access::new(config, None, 1, Arc::default()));
        let get = |who, path: &'static str, creds| status(&auth, who, Method::GET, path, creds);
        assert_eq!(
            get(remote(), "/metrics", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(remote(), "/metrics", Some("op:no")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(remote(), "/metrics", Some("op:pw")).await,
            StatusCode::OK
        );
        assert_eq!(get(remote(), "/health/ready", None).await, StatusCode::OK);
        assert_eq!(
            get(socket.clone(), "/api/v1/status", None).await,
            StatusCode::OK
        );
        let post = |who, creds| status(&auth, who, Method::POST, feedback, creds);
        assert_eq!(post(remote(), Some("op:pw")).await, StatusCode::OK);
        assert_eq!(post(remote(), None).await, StatusCode::UNAUTHORIZED);
        // Loopback does not skip the credentials reads need.
        assert_eq!(
            post(peer("127.0.0.1:1", false), None).await,
            StatusCode::UNAUTHORIZED
        );
        // Beyond the connection cap: health only.
        let over = Some(Peer {
            addr: Some("127.0.0.1:1".parse().unwrap()),
            verified_cert: false,
            overflow: true,
        });
        assert_eq!(
            get(over.clone(), "/health/live", None).await,
            StatusCode::OK
        );
        assert_eq!(
            get(over, "/metrics", Some("op:pw")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn right_passwords_are_remembered_wrong_ones_are_not() {
        let mut config = WebConfig::none();
        config
            .users
            .insert("prom".into(), bcrypt::hash("secret", 4).unwrap());
        let access = Access::new(config, None, 1, Arc::default());
        let active = access.current();
        let basic = |s: &str| {
            HeaderValue::try_from(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
            .unwrap()
        };
        assert!(!access.basic_auth(&active, Some(&basic("prom:wrong"))).await);
        assert!(
            !access
                .basic_auth(&active, Some(&basic("nobody:secret")))
                .await
        );
        assert!(active.verified.lock().unwrap().is_empty());
        assert!(
            access
                .basic_auth(&active, Some(&basic("prom:secret")))
                .await
        );
        assert_eq!(active.verified.lock().unwrap().len(), 1);
        assert!(
            access
                .basic_auth(&active, Some(&basic("prom:secret")))
                .await
        );
        assert!(!access.basic_auth(&active, None).await);
    }
}
