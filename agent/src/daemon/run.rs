//! `sonde run`: the agent's wiring. Bind the port, load and attach the
//! programs off the async workers, start the ring reader and the
//! collector, publish the shared state, start the tasks (MAPE-K loop,
//! interface watcher, health refresher, OTLP export), then wait for
//! signals and shut down in order. Each step is one function.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{
    failure::Failure,
    netwatch, reload,
    setup::{LOG_TARGET, Sources, init_logging},
};
use crate::{
    cli::RunArgs,
    collectors::Collector,
    config::Config,
    events, http, mapek,
    metrics::Metrics,
    netif, notify, otlp,
    probes::{self, Probes, capabilities::Capabilities},
    state::{AppState, HealthState},
    tasks::{self, RESTART_BUDGET, RESTART_WINDOW, Role},
};

/// Flips to `true` once, on SIGTERM or SIGINT.
type Shutdown = watch::Receiver<bool>;

pub fn run(args: RunArgs) -> Result<(), Failure> {
    let sources = Sources {
        listen: args.listen,
        web_config_file: args.web_config_file,
        ..Sources::of(&args.common)
    };
    let config = sources.load().map_err(Failure::usage)?;
    // An unreadable or invalid web configuration stops the agent here (exit
    // 2, naming the key): serving without the TLS or auth it asks for
    // would be worse than not serving.
    let web_config = match &config.http.web_config_file {
        Some(path) => http::web_config::WebConfig::load(path).map_err(Failure::usage)?,
        None => http::web_config::WebConfig::none(),
    };
    init_logging(&config);
    let interfaces = if config.network.enabled {
        netif::resolve(&config.network.interfaces).map_err(Failure::usage)?
    } else {
        Vec::new()
    };
    let missing = probes::capabilities::missing_caps();
    if !missing.is_empty() {
        return Err(Failure::runtime(probes::ProbeError::Privileges(missing)));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sonde")
        .build()
        .map_err(|e| Failure::runtime(format!("starting the async runtime: {e}")))?;
    runtime.block_on(serve(config, web_config, sources, interfaces))
}

/// The tasks that run beside the HTTP server until shutdown.
struct Tasks {
    mapek: Option<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
    refresher: JoinHandle<()>,
    otlp: Option<JoinHandle<()>>,
    pods: Option<JoinHandle<()>>,
}

async fn serve(
    config: Config,
    web_config: http::web_config::WebConfig,
    sources: Sources,
    interfaces: Vec<(String, u32)>,
) -> Result<(), Failure> {
    let started_at = Instant::now();
    // Bind first: a port in use is reported before touching the kernel.
    let listener = bind(config.listen)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let server = http::Server::default();
    let tls = web_config.tls.is_some();
    let serving = start_server(listener, &server, &config, web_config, shutdown_rx.clone())?;

    if config.network.enabled && interfaces.is_empty() {
        warn!(
            target: LOG_TARGET,
            "network accounting enabled but no interface is up (besides loopback)"
        );
    }
    let (caps, mut probes, leftovers) = load_probes(&config, &interfaces).await?;
    // Loading parsed the kernel's BTF (megabytes) and the object.
    crate::heap::give_back();
    let mut state = start_pipeline(&config, caps, &mut probes, started_at)?;
    state.serving = server.stats.clone();
    for &(kind, n) in &leftovers.removed {
        state
            .metrics
            .leftovers_removed
            .with_label_values(&[kind])
            .inc_by(n);
    }
    if server.app.set(state.clone()).is_err() {
        return Err(Failure::runtime("agent state set twice"));
    }
    let probes = Arc::new(Mutex::new(probes));
    let mapek = spawn_mapek(&config, &state, &serving, &shutdown_rx);
    let watcher = spawn_watcher(&config, &state, &probes, &shutdown_rx);
    info!(
        target: LOG_TARGET,
        "ready in {} ms; listening on {}://{} (/metrics, /health/ready, /api/v1/status)",
        started_at.elapsed().as_millis(),
        if tls { "https" } else { "http" },
        config.listen
    );
    let tasks = Tasks {
        mapek,
        watcher,
        refresher: spawn_refresher(&state, &shutdown_rx),
        otlp: spawn_otlp(&config, &state, &shutdown_rx),
        pods: spawn_pods(&config, &state, &shutdown_rx),
    };
    // The programs are attached and /health/startup answers 200: tell the
    // service manager (Type=notify), so `systemctl start` returns now.
    let attached = state.attachments().iter().filter(|a| a.attached).count();
    notify::ready(&format!(
        "ready: {attached} hooks attached; listening on {}",
        config.listen
    ));

    let waited = wait_for_signals(&state, &serving, &sources).await;
    notify::stopping();
    state.tasks.shutting_down();
    let _ = shutdown_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || serving.join(Duration::from_millis(1500))).await;
    stop(tasks, &state, &probes).await;
    // This namespace's Sonde lock, held until every filter is detached.
    drop(leftovers);
    info!(target: LOG_TARGET, "detached; bye");
    waited
}

fn bind(listen: SocketAddr) -> Result<std::net::TcpListener, Failure> {
    std::net::TcpListener::bind(listen).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
            "address already in use".to_owned()
        } else {
            e.to_string()
        };
        Failure::runtime(format!("cannot listen on {listen}: {why}"))
    })
}

/// The HTTP server, on its own threads; it answers "starting" until the
/// state is published.
fn start_server(
    listener: std::net::TcpListener,
    server: &http::Server,
    config: &Config,
    web_config: http::web_config::WebConfig,
    shutdown: Shutdown,
) -> Result<http::serve::Serving, Failure> {
    let h = &config.http;
    let access = Arc::new(http::access::Access::new(
        web_config,
        h.admin_socket.clone(),
        h.max_connections,
        server.stats.clone(),
    ));
    let app = http::router(
        server.clone(),
        config.debug.fault_injection,
        access.clone(),
        http::RequestLimits {
            timeout: Duration::from_millis(h.request_timeout_ms),
            max_body_bytes: h.max_body_bytes,
        },
    );
    http::serve::Serving::start(
        listener,
        app,
        access,
        h.web_config_file.clone(),
        h.admin_socket.as_deref(),
        http::serve::Limits {
            header_read_timeout: Duration::from_millis(h.header_read_timeout_ms),
            max_connections: h.max_connections,
        },
        shutdown,
    )
    .map_err(|e| Failure::runtime(format!("starting the HTTP server: {e}")))
}

/// Loading blocks on the verifier; keep it off the async workers so the
/// server answers "starting" meanwhile. First, what a killed Sonde left
/// attached is removed; the returned value holds this namespace's Sonde
/// lock, to be kept until exit.
async fn load_probes(
    config: &Config,
    interfaces: &[(String, u32)],
) -> Result<(Capabilities, Probes, probes::leftovers::Leftovers), Failure> {
    let config = config.clone();
    let interfaces = interfaces.to_vec();
    let (caps, probes, leftovers) = tokio::task::spawn_blocking(move || {
        let leftovers = probes::leftovers::clean(&config.network.lock_dir);
        let caps = Capabilities::detect();
        let probes = Probes::load(&config, &interfaces, &caps, config.collector.bpf_stats);
        (caps, probes, leftovers)
    })
    .await
    .map_err(|e| Failure::runtime(format!("loading task failed: {e}")))?;
    Ok((caps, probes.map_err(Failure::runtime)?, leftovers))
}

/// Starts the ring reader and the collector over the loaded programs'
/// maps, and gathers everything into the shared state (published).
fn start_pipeline(
    config: &Config,
    caps: Capabilities,
    probes: &mut Probes,
    started_at: Instant,
) -> Result<AppState, Failure> {
    let metrics = Arc::new(Metrics::new().map_err(Failure::runtime)?);
    let program_ids = probes
        .program_infos()
        .into_iter()
        .map(|(name, info)| (name, info.id()))
        .collect();
    let rings = std::mem::take(&mut probes.rings);
    info!(target: LOG_TARGET, "events arrive through {}", probes.event_transport);
    let tasks = tasks::Tasks::new();
    let (events, reader) = events::spawn_readers(
        rings,
        probes.event_transport,
        config.events.keep_recent,
        tasks.clone(),
    )
    .map_err(|e| Failure::runtime(format!("starting the ring reader: {e}")))?;
    let maps = probes
        .maps
        .take()
        .ok_or_else(|| Failure::runtime("kernel maps already taken"))?;
    let collector = Collector::new(maps, config, program_ids, events.rings.clone())
        .spawn(tasks.clone())
        .map_err(|e| Failure::runtime(format!("starting the collector: {e}")))?;

    let state = AppState {
        config: Arc::new(RwLock::new(config.clone())),
        metrics,
        health: HealthState::new(),
        events,
        collector: Arc::new(collector),
        attachments: Arc::default(),
        interfaces: Arc::default(),
        caps: Arc::new(caps),
        started_at,
        readers: Arc::new(Mutex::new(Some(reader))),
        mapek: Arc::default(),
        serving: Arc::default(),
        tasks,
    };
    state.publish(probes);
    Ok(state)
}

/// The MAPE-K loop, when enabled; shared with the HTTP handlers.
fn spawn_mapek(
    config: &Config,
    state: &AppState,
    serving: &http::serve::Serving,
    shutdown: &Shutdown,
) -> Option<JoinHandle<()>> {
    config.mapek.enabled.then(|| {
        let mapek = Arc::new(Mutex::new(mapek::Mapek::new(
            &state.config_snapshot(),
            &state.attachments(),
        )));
        *state.mapek.lock().unwrap_or_else(|e| e.into_inner()) = Some(mapek.clone());
        // Three cycles and five seconds of slack (a cycle holds the loop's
        // lock while it plans).
        let interval = Duration::from_millis(config.collector.interval_ms);
        let task = state.tasks.register(
            "mapek",
            Role::Readiness,
            interval * 3 + Duration::from_secs(5),
        );
        let inputs = mapek::Inputs {
            config: state.config.clone(),
            collector: state.collector.clone(),
            events: state.events.clone(),
            serving_cpu: serving.cpu.clone(),
            task: task.clone(),
        };
        let body = mapek::run(inputs, mapek, shutdown.clone());
        tokio::spawn(state.tasks.clone().run_async(task, body))
    })
}

/// With no interface list, follow interfaces as they come and go (pods'
/// veths on a Kubernetes node).
fn spawn_watcher(
    config: &Config,
    state: &AppState,
    probes: &Arc<Mutex<Probes>>,
    shutdown: &Shutdown,
) -> Option<JoinHandle<()>> {
    (config.network.enabled
        && config.network.interfaces.is_empty()
        && config.network.rescan_interval_s > 0)
        .then(|| {
            let every = Duration::from_secs(config.network.rescan_interval_s);
            // A rescan attaches programs (netlink, the verifier): allow two
            // periods and half a minute.
            let task = state.tasks.register(
                "netwatch",
                Role::Degraded,
                every * 2 + Duration::from_secs(30),
            );
            let body = netwatch::watch(
                state.clone(),
                probes.clone(),
                every,
                task.clone(),
                shutdown.clone(),
            );
            tokio::spawn(state.tasks.clone().run_async(task, body))
        })
}

/// Keeps health metrics current even when nothing polls the endpoints.
fn spawn_refresher(state: &AppState, shutdown: &Shutdown) -> JoinHandle<()> {
    let task = state
        .tasks
        .register("refresher", Role::Degraded, Duration::from_secs(30));
    let tasks = state.tasks.clone();
    let state = state.clone();
    let mut rx = shutdown.clone();
    let beat = task.clone();
    tokio::spawn(tasks.run_async(task, async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    beat.beat_async().await;
                    let _ = crate::health::readiness(&state).await;
                    let _ = crate::health::liveness(&state).await;
                }
                _ = rx.changed() => return,
            }
        }
    }))
}

/// OTLP export, when an endpoint is configured: its own task, so a slow
/// collector never holds up the readers or the collector.
fn spawn_otlp(config: &Config, state: &AppState, shutdown: &Shutdown) -> Option<JoinHandle<()>> {
    config.otlp.enabled().then(|| {
        let o = &config.otlp;
        // An export may take its timeout per signal: two intervals, three
        // timeouts and five seconds.
        let task = state.tasks.register(
            "otlp",
            Role::Readiness,
            Duration::from_millis(2 * o.interval_ms + 3 * o.timeout_ms) + Duration::from_secs(5),
        );
        let body = otlp::run(state.clone(), o.clone(), task.clone(), shutdown.clone());
        tokio::spawn(state.tasks.clone().run_async(task, body))
    })
}

/// Pod identity, when `[kubernetes] enabled`: lists the runtime's pods
/// and containers on a bounded poll (its own task: a slow runtime never
/// holds up a collection).
fn spawn_pods(config: &Config, state: &AppState, shutdown: &Shutdown) -> Option<JoinHandle<()>> {
    let k = &config.kubernetes;
    k.enabled.then(|| {
        // A refresh may take four timeouts: two periods, four timeouts and
        // ten seconds.
        let task = state.tasks.register(
            "kubernetes",
            Role::Degraded,
            Duration::from_secs(2 * k.refresh_interval_s)
                + Duration::from_millis(4 * k.timeout_ms)
                + Duration::from_secs(10),
        );
        let body = crate::pods::run(k.clone(), task.clone(), shutdown.clone());
        tokio::spawn(state.tasks.clone().run_async(task, body))
    })
}

/// Until SIGTERM or SIGINT, or a supervised task gave up (the agent then
/// shuts down in order and exits with code 3); SIGHUP reloads the configuration and the web
/// configuration file.
async fn wait_for_signals(
    state: &AppState,
    serving: &http::serve::Serving,
    sources: &Sources,
) -> Result<(), Failure> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(Failure::runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Failure::runtime)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Failure::runtime)?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!(target: LOG_TARGET, "SIGTERM: shutting down"); return Ok(()); }
            _ = sigint.recv() => { info!(target: LOG_TARGET, "SIGINT: shutting down"); return Ok(()); }
            _ = sighup.recv() => {
                reload::reload(state, sources);
                serving.reload_web_config();
            }
            task = state.tasks.wait_gave_up() => {
                return Err(Failure::GaveUp(format!(
                    "task {task} panicked more than {RESTART_BUDGET} times in {} s",
                    RESTART_WINDOW.as_secs()
                )));
            }
        }
    }
}

/// Stops the tasks (the loop saves what it learned), the ring reader, and
/// detaches every program.
async fn stop(tasks: Tasks, state: &AppState, probes: &Arc<Mutex<Probes>>) {
    tasks.refresher.abort();
    if let Some(task) = tasks.pods {
        task.abort();
    }
    if let Some(task) = tasks.otlp {
        // It returns on the shutdown signal, even mid-export.
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_millis(300), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    if let Some(task) = tasks.mapek {
        // Lets it save what it learned.
        let _ = tokio::time::timeout(Duration::from_millis(300), task).await;
    }
    if let Some(watcher) = tasks.watcher {
        watcher.abort();
    }
    let reader = state
        .readers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(reader) = reader {
        reader.stop();
    }
    // Unloading the programs detaches every link, even though the watcher
    // task (aborted above) may still hold a handle to the probes.
    probes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .detach_all();
}
