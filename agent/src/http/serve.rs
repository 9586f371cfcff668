//! The server itself: its own runtime on its own threads (so the cost
//! governor can tell serving from telemetry: [`Serving::cpu`]), hyper's
//! HTTP/1.1 connection builder with a header-read timeout, TLS through
//! rustls when the web configuration asks for it, a connection cap, and
//! the admin unix socket.
//!
//! Limits, from `[http]`:
//! - headers (and the TLS handshake) must arrive within
//!   `header_read_timeout_ms`, or the connection is closed — idle and
//!   half-open connections included;
//! - a request (body and answer included) taking longer than
//!   `request_timeout_ms` is answered 408; a body above `max_body_bytes`
//!   413 (tower-http, in [`super::router`]);
//! - at most `max_connections` TCP connections; beyond it
//!   [`OVERFLOW_CONNECTIONS`] more are taken, with a 1 s header timeout and
//!   no keep-alive, and answer /health/* only (503 otherwise), so probes
//!   still get through a flood; beyond those, connections are closed as
//!   soon as accepted.

use std::{
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{Router, extract::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{Semaphore, watch},
};
use tower::ServiceExt;
use tracing::{error, info, warn};

use super::{
    access::{Access, Peer},
    web_config::WebConfig,
};
use crate::time::ThreadCpu;

/// Connections taken beyond the cap, for health probes.
pub const OVERFLOW_CONNECTIONS: usize = 8;
/// Connections over the admin socket at once.
const ADMIN_CONNECTIONS: usize = 16;
/// Header timeout of the connections beyond the cap.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_millis(500);

/// Connection limits (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// What the server's threads share.
struct Context {
    app: Router,
    access: Arc<Access>,
    limits: Limits,
    connections: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    admin: Arc<Semaphore>,
}

/// The running server. Dropping it does not stop it: send the shutdown
/// signal, then [`Serving::join`].
pub struct Serving {
    /// CPU time of the server's threads.
    pub cpu: Arc<ThreadCpu>,
    access: Arc<Access>,
    web_config_file: Option<PathBuf>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Serving {
    /// Starts serving `app` on `listener` (and on `admin_socket`, created
    /// now: a stale socket is replaced) until `shutdown` changes.
    pub fn start(
        listener: std::net::TcpListener,
        app: Router,
        access: Arc<Access>,
        web_config_file: Option<PathBuf>,
        admin_socket: Option<&Path>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<Serving> {
        listener.set_nonblocking(true)?;
        let admin = match admin_socket {
            Some(path) => Some((bind_admin(path)?, path.to_owned())),
            None => None,
        };
        let cpu = Arc::new(ThreadCpu::default());
        let (enter, leave) = (cpu.clone(), cpu.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(super::access::BCRYPT_AT_ONCE + 1)
            .enable_all()
            .thread_name("sonde-http")
            .on_thread_start(move || enter.enter())
            .on_thread_stop(move || leave.leave())
            .build()?;
        let context = Arc::new(Context {
            app,
            access: access.clone(),
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            overflow: Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS)),
            admin: Arc::new(Semaphore::new(ADMIN_CONNECTIONS)),
        });
        let ctx = context;
        let thread_cpu = cpu.clone();
        let thread = std::thread::Builder::new()
            .name("sonde-http".into())
            .spawn(move || {
                thread_cpu.enter();
                runtime.block_on(async move {
                    let tcp = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            error!("HTTP server: {e}");
                            return;
                        }
                    };
                    let admin = admin.and_then(|(l, path)| match UnixListener::from_std(l) {
                        Ok(l) => Some((l, path)),
                        Err(e) => {
                            error!("admin socket: {e}");
                            None
                        }
                    });
                    let admin_path = admin.as_ref().map(|(_, p)| p.clone());
                    let unix = admin
                        .map(|(l, _)| tokio::spawn(accept_unix(l, ctx.clone(), shutdown.clone())));
                    accept_tcp(tcp, ctx.clone(), shutdown).await;
                    if let Some(unix) = unix {
                        let _ = unix.await;
                    }
                    // Connections got the signal too; give them a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Some(path) = admin_path {
                        let _ = std::fs::remove_file(path);
                    }
                });
                runtime.shutdown_timeout(DRAIN);
                thread_cpu.leave();
            })?;
        Ok(Serving {
            cpu,
            access,
            web_config_file,
            thread: Some(thread),
        })
    }

    /// Re-reads the web configuration file (SIGHUP): new connections and
    /// requests follow it; an invalid file keeps the one in force.
    pub fn reload_web_config(&self) {
        let Some(path) = &self.web_config_file else {
            return;
        };
        match WebConfig::load(path) {
            Ok(config) => {
                info!(
                    tls = config.tls.is_some(),
                    users = config.users.len(),
                    "SIGHUP: web configuration {} reloaded",
                    path.display()
                );
                self.access.replace(config);
            }
            Err(err) => {
                error!("SIGHUP: keeping the current web configuration: {err}");
            }
        }
    }

    /// Waits (up to `timeout`) for the server's thread after shutdown.
    pub fn join(mut self, timeout: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + timeout;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

/// Binds the admin socket with mode 0600: under a temporary name, made
/// private, then renamed over the final name (replacing a stale socket),
/// so the final path is never reachable with looser permissions.
fn bind_admin(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let context = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("admin socket {}: {what}: {e}", path.display()),
        )
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(context(
                "exists and is not a socket",
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| context("creating its directory", e))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| context("binding", e))?;
    let done = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(context("making it private", e));
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn accept_tcp(listener: TcpListener, ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, most likely: back off.
                    warn!("HTTP server: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (permit, overflow) = match ctx.connections.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => match ctx.overflow.clone().try_acquire_owned() {
                Ok(permit) => (permit, true),
                Err(_) => {
                    ctx.access
                        .stats
                        .connections_closed_at_once
                        .fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
            },
        };
        let stats = ctx.access.stats.clone();
        if overflow {
            stats.connections_over_cap.fetch_add(1, Ordering::Relaxed);
        }
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = Open(stats);
            let _ = stream.set_nodelay(true);
            let header_timeout = if overflow {
                OVERFLOW_HEADER_TIMEOUT.min(ctx.limits.header_read_timeout)
            } else {
                ctx.limits.header_read_timeout
            };
            let mut peer = Peer {
                addr: Some(addr),
                verified_cert: false,
                overflow,
            };
            let tls = ctx.access.current().config.tls.clone();
            match tls {
                None => {
                    serve_connection(TokioIo::new(stream), peer, &ctx, header_timeout, shutdown)
                        .await
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let stream =
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            // A failed or slow handshake: nothing to answer.
                            _ => return,
                        };
                    peer.verified_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    serve_connection(TokioIo::new(stream), peer, &ctx, header_timeout, shutdown)
                        .await
                }
            }
        });
    }
}

/// Counts a TCP connection open while it lives.
struct Open(Arc<crate::serving::Stats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_unix(
    listener: UnixListener,
    ctx: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("admin socket: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = ctx.admin.clone().try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = Peer {
                addr: None,
                verified_cert: false,
                overflow: false,
            };
            let timeout = ctx.limits.header_read_timeout;
            serve_connection(TokioIo::new(stream), peer, &ctx, timeout, shutdown).await;
        });
    }
}

/// One HTTP/1.1 connection, every request tagged with `peer`.
async fn serve_connection<I>(
    io: I,
    peer: Peer,
    ctx: &Context,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let overflow = peer.overflow;
    let service = ctx
        .app
        .clone()
        .map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(!overflow);
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, connection).await;
        }
    }
}
