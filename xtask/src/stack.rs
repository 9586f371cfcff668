//! `cargo xtask stack`: the agent plus a real Prometheus (scraping it, with
//! deploy/prometheus/alerts.yml loaded) and a real Alertmanager, on this
//! machine's loopback, for a newcomer to see everything working: metrics,
//! alerts, and their routing. Ctrl-C (or `--duration`) stops all three.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{run, toolchain, util};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Service {
    name: &'static str,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `preferred` if it is free on loopback, else any free port.
fn port(preferred: u16) -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))
        .context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn start(name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<Service> {
    let log = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name} ({})", util::display(cmd)))?;
    Ok(Service { name, child })
}

/// Plain HTTP GET on loopback; the body when the status is 200.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
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
    for (binary, package) in [
        ("prometheus", "prometheus"),
        ("prometheus-alertmanager", "prometheus-alertmanager"),
    ] {
        if util::which(binary).is_none() {
            bail!("{binary} is not installed: apt-get install {package}");
        }
    }
    util::header("toolchain");
    toolchain::ensure(toolchain::Purpose::Build)?;
    util::header("build");
    util::run(util::cargo().args(["build", "--release", "-p", "sonde"]))?;

    let dir = util::target_dir().join("stack");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let (agent_port, prom_port, am_port) = (port(9745)?, port(9090)?, port(9093)?);
    let alerts = util::workspace_root().join("deploy/prometheus/alerts.yml");
    // The dashboards choose and name agents by a node label: this machine's.
    let node = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
             rule_files: [\"{}\"]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\n\
             scrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: [\"127.0.0.1:{agent_port}\"]\n\
             \x20       labels: {{node: \"{node}\"}}\n",
            alerts.display()
        ),
    )?;
    fs::write(
        dir.join("alertmanager.yml"),
        "route:\n  receiver: default\n  group_wait: 5s\n  group_interval: 30s\nreceivers:\n  - name: default\n",
    )?;

    util::header("start");
    let mut agent_cmd = run::privileged(&util::target_dir().join("release/sonde"))?;
    agent_cmd.args(["run", "--listen", &format!("127.0.0.1:{agent_port}")]);
    let _agent = start("sonde", &mut agent_cmd, &dir.join("sonde.log"))?;
    let _alertmanager = start(
        "alertmanager",
        Command::new("prometheus-alertmanager").args([
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("alertmanager").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".to_owned(),
        ]),
        &dir.join("alertmanager.log"),
    )?;
    let _prometheus = start(
        "prometheus",
        Command::new("prometheus").args([
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ]),
        &dir.join("prometheus.log"),
    )?;

    let agent: SocketAddr = ([127, 0, 0, 1], agent_port).into();
    let prom: SocketAddr = ([127, 0, 0, 1], prom_port).into();
    let am: SocketAddr = ([127, 0, 0, 1], am_port).into();
    let logs = dir.display();
    wait_until("the agent", Duration::from_secs(60), || {
        get(agent, "/health/startup").is_some()
    })
    .with_context(|| format!("see {logs}/sonde.log"))?;
    wait_until("Alertmanager", Duration::from_secs(30), || {
        get(am, "/-/ready").is_some()
    })
    .with_context(|| format!("see {logs}/alertmanager.log"))?;
    wait_until(
        "Prometheus scraping the agent",
        Duration::from_secs(60),
        || {
            // up{job="sonde",node!=""}
            get(
                prom,
                "/api/v1/query?query=up%7Bjob%3D%22sonde%22%2Cnode%21%3D%22%22%7D",
            )
            .is_some_and(|body| body.contains("\"1\""))
        },
    )
    .with_context(|| format!("see {logs}/prometheus.log"))?;

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
