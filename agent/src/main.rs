//! Sonde's daemon entry point: parse the command line, load the config, and
//! run or check. Exit codes: 0 ok, 1 runtime or environment error (missing
//! privileges, kernel without a hook, port in use), 2 usage or config error.

mod cgroup;
mod cli;
mod collectors;
mod config;
mod events;
mod health;
mod http;
mod mapek;
mod metrics;
mod netif;
mod otlp;
mod probes;
mod state;
mod syscall_table;
mod version;

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use clap::Parser;
use cli::{BaselineCommand, Cli, Command, CommonArgs, RunArgs};
use config::Config;
use probes::{Probes, capabilities::Capabilities};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// An error with the exit code it deserves.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl ToString) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
        }
    }

    fn runtime(message: impl ToString) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are "errors" that exit 0.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Baseline(cmd) => baseline(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sonde: error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn load_config(args: &CommonArgs) -> Result<Config, Failure> {
    let mut config =
        Config::load(args.config.as_deref(), std::env::vars()).map_err(Failure::usage)?;
    if !args.interfaces.is_empty() {
        config.network.interfaces = args.interfaces.clone();
        config.validate().map_err(Failure::usage)?;
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: RunArgs) -> Result<(), Failure> {
    let mut config = load_config(&args.common)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
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
    runtime.block_on(serve(config, args.common.config, interfaces))
}

async fn serve(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    interfaces: Vec<(String, u32)>,
) -> Result<(), Failure> {
    let started_at = Instant::now();
    // Bind first: a port in use is reported before touching the kernel.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                "address already in use".to_owned()
            } else {
                e.to_string()
            };
            Failure::runtime(format!("cannot listen on {}: {why}", config.listen))
        })?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = http::Server::default();
    let server_task = {
        let app = http::router(server.clone(), config.debug.fault_injection);
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        })
    };

    if config.network.enabled && interfaces.is_empty() {
        warn!("network accounting enabled but no interface is up (besides loopback)");
    }
    // Loading blocks on the verifier; keep it off the async workers so the
    // server answers "starting" meanwhile.
    let (caps, probes) = {
        let config = config.clone();
        let interfaces = interfaces.clone();
        tokio::task::spawn_blocking(move || {
            let caps = Capabilities::detect();
            let probes = Probes::load(&config, &interfaces, &caps, config.collector.bpf_stats);
            (caps, probes)
        })
        .await
        .map_err(|e| Failure::runtime(format!("loading task failed: {e}")))?
    };
    let mut probes = probes.map_err(Failure::runtime)?;
    // Loading parsed the kernel's BTF (megabytes) and the object; give the
    // freed heap back to the system rather than carry it for the agent's
    // lifetime.
    // (musl's allocator returns memory by itself and has no malloc_trim.)
    #[cfg(target_env = "gnu")]
    // SAFETY: plain libc call with no preconditions.
    unsafe {
        libc::malloc_trim(0)
    };
    let metrics = Arc::new(metrics::Metrics::new().map_err(Failure::runtime)?);

    let program_ids = probes
        .program_infos()
        .into_iter()
        .map(|(name, info)| (name, info.id()))
        .collect();
    let rings = std::mem::take(&mut probes.rings);
    info!("events arrive through {}", probes.event_transport);
    let (events, reader) =
        events::spawn_readers(rings, probes.event_transport, config.events.keep_recent)
            .map_err(|e| Failure::runtime(format!("starting the ring reader: {e}")))?;
    let maps = probes
        .maps
        .take()
        .ok_or_else(|| Failure::runtime("kernel maps already taken"))?;
    let collector = collectors::Collector::new(
        maps,
        &config,
        program_ids,
        events.rings.clone(),
        &probes.drop_reasons,
    )
    .spawn()
    .map_err(|e| Failure::runtime(format!("starting the collector: {e}")))?;

    let state = state::AppState {
        config: Arc::new(RwLock::new(config.clone())),
        metrics,
        health: health::HealthState::new(),
        events,
        collector: Arc::new(collector),
        attachments: Arc::default(),
        interfaces: Arc::default(),
        caps: Arc::new(caps),
        started_at,
        readers: Arc::new(Mutex::new(Some(reader))),
        mapek: Arc::default(),
    };
    state.publish(&probes);
    if server.app.set(state.clone()).is_err() {
        return Err(Failure::runtime("agent state set twice"));
    }
    let probes = Arc::new(Mutex::new(probes));
    let mapek_task = config.mapek.enabled.then(|| {
        let mapek = Arc::new(Mutex::new(mapek::Mapek::new(&state)));
        *state.mapek.lock().unwrap_or_else(|e| e.into_inner()) = Some(mapek.clone());
        tokio::spawn(mapek::run(state.clone(), mapek, shutdown_rx.clone()))
    });
    // With no interface list, follow interfaces as they come and go (pods'
    // veths on a Kubernetes node).
    let watcher = (config.network.enabled
        && config.network.interfaces.is_empty()
        && config.network.rescan_interval_s > 0)
        .then(|| {
            tokio::spawn(netif::watch(
                state.clone(),
                probes.clone(),
                Duration::from_secs(config.network.rescan_interval_s),
                shutdown_rx.clone(),
            ))
        });
    info!(
        "ready in {} ms; listening on http://{} (/metrics, /health/ready, /api/v1/status)",
        started_at.elapsed().as_millis(),
        config.listen
    );

    // Keep health metrics current even when nothing polls the endpoints.
    let refresher = {
        let state = state.clone();
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => { let _ = health::readiness(&state).await; }
                    _ = rx.changed() => return,
                }
            }
        })
    };

    // OTLP export, when an endpoint is configured: its own task, so a slow
    // collector never holds up the readers or the collector.
    let otlp_task = config.otlp.endpoint.is_some().then(|| {
        tokio::spawn(otlp::run(
            state.clone(),
            config.otlp.clone(),
            shutdown_rx.clone(),
        ))
    });

    let mut sigterm = signal(SignalKind::terminate()).map_err(Failure::runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Failure::runtime)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Failure::runtime)?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => reload(&state, config_path.as_deref()),
        }
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_millis(1500), server_task).await;
    refresher.abort();
    if let Some(task) = otlp_task {
        // It returns on the shutdown signal, even mid-export.
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_millis(300), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    if let Some(task) = mapek_task {
        // Lets it save what it learned.
        let _ = tokio::time::timeout(Duration::from_millis(300), task).await;
    }
    if let Some(watcher) = watcher {
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
    info!("detached; bye");
    Ok(())
}

/// SIGHUP: re-read the config file and apply what can change at run time.
fn reload(state: &state::AppState, path: Option<&std::path::Path>) {
    let new = match Config::load(path, std::env::vars()) {
        Ok(new) => new,
        Err(err) => {
            error!("SIGHUP: keeping the current configuration: {err}");
            return;
        }
    };
    let mut current = state.config.write().unwrap_or_else(|e| e.into_inner());
    let mut restart_needed = Vec::new();
    if new.listen != current.listen {
        restart_needed.push("listen");
    }
    if new.network.interfaces != current.network.interfaces
        || new.network.enabled != current.network.enabled
        || new.network.max_flows != current.network.max_flows
        || new.network.xdp_mode != current.network.xdp_mode
    {
        restart_needed.push("network");
    }
    if new.events != current.events {
        restart_needed.push("events");
    }
    if new.otlp != current.otlp {
        restart_needed.push("otlp");
    }
    if new.tcp.enabled != current.tcp.enabled {
        restart_needed.push("tcp.enabled");
    }
    if new.syscalls.enabled != current.syscalls.enabled
        || new.syscalls.hook != current.syscalls.hook
    {
        restart_needed.push("syscalls.enabled/hook");
    }
    if !restart_needed.is_empty() {
        warn!(
            "SIGHUP: {} changed but only take effect after a restart",
            restart_needed.join(", ")
        );
    }
    // Apply the runtime-tunable part on top of what is running.
    current.syscalls.slow_threshold_ms = new.syscalls.slow_threshold_ms;
    current.syscalls.slow_ignore = new.syscalls.slow_ignore.clone();
    current.syscalls.latency_sample_every = new.syscalls.latency_sample_every;
    current.network.flow_events_per_second = new.network.flow_events_per_second;
    current.network.flow_events_burst = new.network.flow_events_burst;
    current.network.top_peers = new.network.top_peers;
    current.tcp.rtt = new.tcp.rtt;
    current.tcp.top_peers = new.tcp.top_peers;
    current.health = new.health.clone();
    // The MAPE-K loop reads these every cycle; leaving enforce mode lifts
    // every block at its next cycle.
    current.mapek.mode = new.mapek.mode;
    current.mapek.block_ttl_seconds = new.mapek.block_ttl_seconds;
    current.mapek.max_blocked = new.mapek.max_blocked;
    current.mapek.never_block = new.mapek.never_block.clone();
    state.collector.reconfigure(current.clone());
    info!(
        slow_threshold_ms = current.syscalls.slow_threshold_ms,
        mapek_mode = current.mapek.mode.label(),
        "SIGHUP: runtime settings reloaded"
    );
}

/// `sonde check`: report capabilities, then load and attach everything the
/// config asks for and detach again. Non-zero when the agent cannot run.
fn check(args: CommonArgs) -> Result<(), Failure> {
    let mut config = load_config(&args)?;
    // Fallbacks and their reasons are logged as warnings: show them.
    config.log_level = "warn".into();
    init_logging(&config);
    let caps = Capabilities::detect();
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("kernel            {}", caps.kernel_release);
    println!("BTF               {}", yes(caps.btf));
    println!("raw tracepoints   {}", yes(caps.raw_tracepoint));
    println!("tracepoints       {}", yes(caps.tracepoint));
    println!("kprobes           {}", yes(caps.kprobes));
    println!("fentry/fexit      {}", yes(caps.fentry));
    println!("XDP               {}", yes(caps.xdp));
    println!("TC (sched_cls)    {}", yes(caps.tc));
    println!("BPF ring buffer   {}", yes(caps.ringbuf_map));
    println!("tracefs mounted   {}", yes(caps.tracefs_mounted));
    println!(
        "bpffs mounted     {} (not needed: Sonde pins nothing)",
        yes(caps.bpffs_mounted)
    );
    println!(
        "bpf_stats         {}",
        if caps.bpf_stats_enabled { "on" } else { "off" }
    );
    if caps.missing_caps.is_empty() {
        println!("privileges        ok");
    } else {
        println!("privileges        missing {}", caps.missing_caps.join(", "));
        return Err(Failure::runtime(probes::ProbeError::Privileges(
            caps.missing_caps.clone(),
        )));
    }
    let interfaces = if config.network.enabled {
        netif::resolve(&config.network.interfaces).map_err(Failure::usage)?
    } else {
        Vec::new()
    };
    let probes = Probes::load(&config, &interfaces, &caps, false).map_err(Failure::runtime)?;
    let mut by_program: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut unavailable = Vec::new();
    for a in &probes.attachments {
        if a.attached {
            by_program
                .entry(a.program)
                .or_default()
                .push(format!("{} ({})", a.hook, a.mode));
        } else {
            unavailable.push(format!(
                "{} {}: {}",
                a.program,
                a.hook,
                a.error.as_deref().unwrap_or("not attached")
            ));
        }
    }
    for (program, hooks) in by_program {
        println!("attached          {program}: {}", hooks.join(", "));
    }
    for line in &unavailable {
        println!("unavailable       {line}");
    }
    for line in &probes.limitations {
        println!("partial           {line}");
    }
    println!("events            {}", probes.event_transport);
    drop(probes);
    if unavailable.is_empty() {
        println!("result            ok: every program loaded and attached, then detached");
    } else {
        println!(
            "result            ok (degraded): {} optional program(s) unavailable, the rest attached and detached",
            unavailable.len()
        );
    }
    Ok(())
}

fn baseline(cmd: BaselineCommand) -> Result<(), Failure> {
    use probes::baseline::Baseline;
    let baseline = match cmd {
        BaselineCommand::Syscalls { hook, timed } => Baseline::Syscalls {
            timed,
            hook: match hook.as_str() {
                "raw_tracepoint" => config::SyscallHook::RawTracepoint,
                "tracepoint" => config::SyscallHook::Tracepoint,
                other => {
                    return Err(Failure::usage(format!(
                        "--hook {other}: expected raw_tracepoint or tracepoint"
                    )));
                }
            },
        },
        BaselineCommand::Packets {
            interfaces,
            ingress,
        } => Baseline::Packets {
            interfaces,
            ingress,
        },
        BaselineCommand::RingReader { ring_bytes } => Baseline::RingReader { ring_bytes },
    };
    probes::baseline::run(baseline).map_err(Failure::runtime)
}
