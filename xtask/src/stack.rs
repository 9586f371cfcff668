//! `cargo xtask stack`: the agent plus a real Prometheus (scraping it, with
//! deploy/prometheus/alerts.yml loaded) and a real Alertmanager, on this
//! machine's loopback, for a newcomer to see everything working: metrics,
//! alerts, and their routing. Ctrl-C (or `--duration`) stops all three.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sonde_tests::{
    http,
    ops::{
        servers::{Alertmanager, Placement, Prometheus, PrometheusConfig},
        urlencode,
    },
    process::Proc,
};

use crate::{run, util};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
}

/// `preferred` if it is free on loopback, else any free port.
fn port(preferred: u16) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))
        .context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// Whether `GET path` answers 200 (with the body).
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let r = http::get(addr, path).ok()?;
    (r.status == 200).then_some(r.body)
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("{what} was not ready within {} s", timeout.as_secs())
}

impl Options {
    /// What `cargo xtask test` runs: bring everything up, check Prometheus
    /// scrapes the agent, stop.
    pub fn smoke() -> Self {
        Self { duration: Some(1) }
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::bootstrap::ensure_tools(
        &[
            ("prometheus", "prometheus"),
            ("prometheus-alertmanager", "prometheus-alertmanager"),
        ],
        "the stack",
    )?;
    util::header("toolchain");
    crate::bootstrap::ensure_build()?;
    util::header("build");
    util::run(util::cargo().args(["build", "--release", "-p", "sonde"]))?;

    let dir = util::target_dir().join("stack");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let (agent, prom, am) = (port(9745)?, port(9090)?, port(9093)?);
    let logs = dir.display();
    // The dashboards choose and name agents by a node label: this machine's.
    let node = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());

    util::header("start");
    // The agent through sudo when not root: a plain child, not the
    // harness's Agent (which starts the binary itself).
    let mut agent_cmd = run::privileged(&util::target_dir().join("release/sonde"))?;
    agent_cmd.args(["run", "--listen", &agent.to_string()]);
    let _agent = Proc::spawn_logged("sonde", agent_cmd, &dir.join("sonde.log"))?;
    let _alertmanager = Alertmanager::launch(
        "5s",
        "30s",
        &Placement {
            dir: Some(dir.join("alertmanager")),
            addr: Some(am),
            ..Placement::default()
        },
    )
    .with_context(|| format!("see {logs}/alertmanager/server.log"))?;
    let alerts = util::workspace_root().join("deploy/prometheus/alerts.yml");
    let _prometheus = Prometheus::launch(
        &PrometheusConfig {
            targets: &[agent],
            interval: "5s",
            rules: None,
            rule_file: Some(&alerts),
            alertmanager: Some(am),
            node: Some(&node),
        },
        &Placement {
            dir: Some(dir.join("prometheus")),
            addr: Some(prom),
            ..Placement::default()
        },
    )
    .with_context(|| format!("see {logs}/prometheus/server.log"))?;

    wait_until("the agent", Duration::from_secs(60), || {
        get(agent, "/health/startup").is_some()
    })
    .with_context(|| format!("see {logs}/sonde.log"))?;
    let up = format!(
        "/api/v1/query?query={}",
        urlencode("up{job=\"sonde\",node!=\"\"}")
    );
    wait_until(
        "Prometheus scraping the agent",
        Duration::from_secs(60),
        || get(prom, &up).is_some_and(|body| body.contains("\"1\"")),
    )
    .with_context(|| format!("see {logs}/prometheus/server.log"))?;

    println!(
        "Sonde:        http://{agent}/metrics  http://{agent}/health/ready  http://{agent}/api/v1/anomalies"
    );
    println!(
        "Prometheus:   http://{prom}/  (scraping Sonde every 5 s as node {node:?}, alerts from deploy/prometheus/alerts.yml)"
    );
    println!("Alertmanager: http://{am}/");
    println!("Logs and data: {logs}");
    match opts.duration {
        Some(seconds) => {
            println!("running for {seconds} s");
            std::thread::sleep(Duration::from_secs(seconds));
        }
        None => {
            println!("Ctrl-C stops all three.");
            wait_for_sigint();
        }
    }
    println!("stopping");
    Ok(())
}

/// Blocks until SIGINT (the children, in the same process group, get it
/// too and stop by themselves; the guards make sure).
fn wait_for_sigint() {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut sig = 0;
    // SAFETY: a zeroed sigset filled by sigemptyset/sigaddset, then blocked
    // and waited for on this thread; plain libc calls.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::sigwait(&set, &mut sig);
    }
}
