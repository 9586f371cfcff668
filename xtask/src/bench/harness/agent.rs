//! The agent under measurement (`sonde run`), its HTTP endpoints and its
//! metrics, plus the other tools the scenarios compare it with: the hidden
//! `sonde baseline` programs and bpftrace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::process::{Proc, scratch_path};

/// How long a program may take to attach before the scenario fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// bpftrace doing what Sonde's syscall programs do: count and time every
/// syscall, per syscall id.
pub const BPFTRACE_SYSCALLS: &str = "tracepoint:raw_syscalls:sys_enter { @s[tid] = nsecs; } \
tracepoint:raw_syscalls:sys_exit /@s[tid]/ { @c[args->id] = count(); \
@h[args->id] = hist(nsecs - @s[tid]); delete(@s[tid]); }";

/// The release binaries the scenarios run.
#[derive(Debug, Clone)]
pub struct Bins {
    pub sonde: PathBuf,
    pub workload: PathBuf,
}

impl Bins {
    /// The release binaries in target/release, built first (with the
    /// toolchain installed if need be) unless `no_build`.
    pub fn release(no_build: bool) -> anyhow::Result<Bins> {
        use crate::{
            toolchain::{self, Purpose},
            util,
        };
        if !no_build {
            util::header("toolchain and release build");
            toolchain::ensure(Purpose::Build)?;
            util::run(util::cargo().args(["build", "--release", "-p", "sonde"]))?;
            util::run(util::cargo().args(["build", "--release", "-p", "sonde-tests", "--bins"]))?;
        }
        let release = util::target_dir().join("release");
        let bins = Bins {
            sonde: release.join("sonde"),
            workload: release.join("sonde-workload"),
        };
        for bin in [&bins.sonde, &bins.workload] {
            if !bin.is_file() {
                bail!("{} is missing: run without --no-build", bin.display());
            }
        }
        Ok(bins)
    }
}

/// The tools of `(tool, Debian package)` that are not on PATH, each as
/// "tool (apt-get install package)".
pub fn missing_tools(tools: &[(&str, &str)]) -> Vec<String> {
    tools
        .iter()
        .filter(|(tool, _)| crate::util::which(tool).is_none())
        .map(|(tool, pkg)| format!("{tool} (apt-get install {pkg})"))
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `GET path` over HTTP/1.0 (so the body ends with the connection).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from http://{addr}{path}"))?;
    Ok((status, body.to_owned()))
}

/// One scrape of a Prometheus text exposition.
pub struct Metrics {
    /// (name, labels as written between the braces, value)
    samples: Vec<(String, String, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_owned(), labels.to_owned(), value))
            })
            .collect();
        Metrics { samples }
    }

    /// Number of series (sample lines).
    pub fn series(&self) -> usize {
        self.samples.len()
    }

    /// Sum over the series of `name` whose labels contain every `k="v"`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && wanted.iter().all(|w| l.contains(w.as_str())))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Number of series called `name`.
    pub fn count(&self, name: &str) -> usize {
        self.samples.iter().filter(|(n, _, _)| n == name).count()
    }
}

/// A running `sonde run` with its own config file and port.
pub struct Agent {
    proc: Proc,
    addr: SocketAddr,
    config: PathBuf,
    /// Spawn to `/health/startup` = 200.
    pub startup: Duration,
}

impl Agent {
    /// Starts the agent and waits until every program is attached.
    pub fn start(bins: &Bins, config_toml: &str, interfaces: &[&str]) -> anyhow::Result<Agent> {
        let config = scratch_path("sonde.toml");
        std::fs::write(&config, config_toml)
            .with_context(|| format!("writing {}", config.display()))?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut cmd = Command::new(&bins.sonde);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &addr.to_string()]);
        for i in interfaces {
            cmd.args(["--interface", i]);
        }
        let start = Instant::now();
        let mut proc = Proc::spawn("sonde", cmd)?;
        let deadline = start + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = http_get(addr, "/health/startup") {
                break;
            }
            if !proc.running() {
                bail!(
                    "sonde exited before it was ready; stderr:\n{}",
                    proc.stderr_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "sonde was not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                    proc.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let startup = start.elapsed();
        Ok(Agent {
            proc,
            addr,
            config,
            startup,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        let (status, body) = http_get(self.addr, "/metrics")?;
        if status != 200 {
            bail!("GET /metrics answered {status}: {body}");
        }
        Ok(Metrics::parse(&body))
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&self, config_toml: &str) -> anyhow::Result<()> {
        std::fs::write(&self.config, config_toml)
            .with_context(|| format!("writing {}", self.config.display()))?;
        self.proc.signal(libc::SIGHUP)
    }

    /// SIGTERM; fails unless the agent exits 0.
    pub fn stop(self) -> anyhow::Result<()> {
        let (status, _) = self.proc.stop()?;
        if !status.success() {
            bail!("sonde exited with {status} on SIGTERM");
        }
        Ok(())
    }
}

/// A started variant of a scenario (nothing, a helper process or the
/// agent); stopped on drop.
pub enum Running {
    Nothing,
    Proc(Proc),
    Agent(Agent),
}

impl Running {
    /// The process's pid (0 for nothing).
    pub fn pid(&self) -> u32 {
        match self {
            Running::Nothing => 0,
            Running::Proc(p) => p.pid(),
            Running::Agent(a) => a.pid(),
        }
    }
}

/// A program that prints `ready` once attached: `sonde baseline ...` or
/// bpftrace (with a `BEGIN` that prints it). Returns it with the time to
/// ready.
pub fn start_ready(name: &str, cmd: Command) -> anyhow::Result<(Proc, Duration)> {
    let start = Instant::now();
    let mut proc = Proc::spawn(name, cmd)?;
    proc.wait_line("ready", READY_TIMEOUT)?;
    Ok((proc, start.elapsed()))
}

/// `sonde baseline ARGS...`, attached.
pub fn baseline(bins: &Bins, args: &[&str]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&bins.sonde);
    cmd.arg("baseline").args(args);
    Ok(start_ready(&format!("baseline-{}", args[0]), cmd)?.0)
}

/// bpftrace running `script`, attached; with the time to ready.
pub fn bpftrace(script: &str) -> anyhow::Result<(Proc, Duration)> {
    let mut cmd = Command::new("bpftrace");
    // BEGIN runs once every probe is attached.
    cmd.arg("-e")
        .arg(format!("BEGIN {{ printf(\"ready\\n\"); }} {script}"));
    start_ready("bpftrace", cmd)
}

/// `sonde-workload ARGS...` run to completion (optionally in a namespace,
/// pinned to `cpus`); returns its last stdout line (the result line).
pub fn workload(
    bins: &Bins,
    netns: Option<&str>,
    cpus: &[usize],
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<String> {
    let proc = spawn_workload(bins, netns, cpus, args)?;
    let out = proc.finish(timeout)?;
    Ok(out.lines().last().unwrap_or_default().to_owned())
}

/// `sonde-workload ARGS...` started, not waited for.
pub fn spawn_workload(
    bins: &Bins,
    netns: Option<&str>,
    cpus: &[usize],
    args: &[&str],
) -> anyhow::Result<Proc> {
    let mut cmd = super::process::command(netns, &bins.workload);
    cmd.args(args);
    Proc::spawn_on(&format!("workload-{}", args[0]), cmd, cpus)
}
