//! The agent under test, as a child process with a private config file, log
//! file and HTTP port. The tests start it with [`Agent::start`] (panics with
//! the agent's log on failure); xtask's benchmark and evaluation start a
//! given binary with [`Agent::launch`] and [`Agent::try_wait_started`], which
//! return errors instead and time the startup.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http::{self, Response};
use crate::scrape::Scrape;
use crate::sys::{self, TempDir};

/// How long the agent may take from spawn to `/health/startup` = 200.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole-number factor on [`STARTUP_TIMEOUT`] and [`STOP_TIMEOUT`] for
/// slow machines: the kernel matrix runs these tests in emulated VMs
/// (`cargo xtask vm-test`), where loading the programs takes many times
/// longer.
pub const TIMEOUT_SCALE_ENV: &str = "SONDE_TEST_TIMEOUT_SCALE";

/// `d` times [`TIMEOUT_SCALE_ENV`] (1 when unset).
pub fn scaled(d: Duration) -> Duration {
    let factor = std::env::var(TIMEOUT_SCALE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * factor
}

/// Per-request timeout for the HTTP client.
const HTTP_TIMEOUT: Duration = http::TIMEOUT;
/// How often [`Agent::wait_started`] asks `/health/startup`.
const STARTUP_POLL: Duration = Duration::from_millis(50);

/// A free TCP port on 127.0.0.1 (bound, read and released; the agent binds it
/// right after, so the race with other processes is negligible).
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`free_port`], returning the error.
pub fn try_free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| io::Error::new(e.kind(), format!("binding 127.0.0.1:0: {e}")))?;
    Ok(l.local_addr()?.port())
}

/// A free `127.0.0.1:PORT` address.
pub fn free_addr() -> io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], try_free_port()?)))
}

/// Makes a child receive SIGTERM when the test process dies, so a crashed or
/// killed test run does not leave an agent or a workload behind.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    crate::process::set_up_child(cmd, libc::SIGTERM, &[]);
}

/// A running `sonde run` process. Dropping it sends SIGTERM and waits for a
/// clean exit (status 0 within [`STOP_TIMEOUT`]); otherwise the drop panics
/// with the agent's log.
pub struct Agent {
    child: Option<Child>,
    addr: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    spawned: Instant,
    startup: Option<Duration>,
    // Last field: removed after the child is gone.
    _dir: TempDir,
}

impl Agent {
    /// Spawns the agent and waits until `/health/startup` answers 200.
    /// Panics (with the agent's log) if it exits or is not started within
    /// [`STARTUP_TIMEOUT`] (times [`TIMEOUT_SCALE_ENV`]).
    pub fn start(config_toml: &str, extra_args: &[&str]) -> Agent {
        let mut agent = Agent::spawn(config_toml, extra_args);
        agent.wait_started(scaled(STARTUP_TIMEOUT));
        agent
    }

    /// [`Agent::start`] with these environment variables set for the
    /// agent (`OTEL_*`, `SONDE_*` overrides).
    pub fn start_with_env(config_toml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut agent = Agent::spawn_with_env(config_toml, extra_args, env);
        agent.wait_started(STARTUP_TIMEOUT);
        agent
    }

    /// Spawns `sonde run --config FILE --listen 127.0.0.1:PORT ARGS...`
    /// without waiting for it to start.
    pub fn spawn(config_toml: &str, extra_args: &[&str]) -> Agent {
        Agent::spawn_with_env(config_toml, extra_args, &[])
    }

    /// [`Agent::spawn`] with these environment variables set for the agent.
    pub fn spawn_with_env(config_toml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::launch(&sys::sonde_bin(), config_toml, extra_args, env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Agent::spawn_with_env`] with the agent binary `bin`, returning
    /// the error when it cannot be started.
    pub fn launch(
        bin: &Path,
        config_toml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> io::Result<Agent> {
        Agent::launch_on(bin, free_addr()?, config_toml, extra_args, env)
    }

    /// [`Agent::spawn`] listening on every address (`0.0.0.0:PORT`), so
    /// that test namespaces reach it; the helpers still ask 127.0.0.1.
    pub fn spawn_on_all_addresses(config_toml: &str, extra_args: &[&str]) -> Agent {
        let port = free_port();
        Agent::launch_on(
            &sys::sonde_bin(),
            SocketAddr::from(([0, 0, 0, 0], port)),
            config_toml,
            extra_args,
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Agent::launch`], listening on `listen` (the helpers ask
    /// 127.0.0.1 on its port when it is the unspecified address).
    pub fn launch_on(
        bin: &Path,
        listen: SocketAddr,
        config_toml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> io::Result<Agent> {
        let dir = TempDir::new("agent");
        let config_path = dir.write("sonde.toml", config_toml);
        let log_path = dir.path().join("agent.log");
        let (log, log2) = sys::log_file(&log_path)?;
        let addr = if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        } else {
            listen
        };
        let mut cmd = Command::new(bin);
        sys::clear_sonde_env(&mut cmd);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(listen.to_string())
            .args(extra_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        die_with_parent(&mut cmd);
        let spawned = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display()))
        })?;
        Ok(Agent {
            child: Some(child),
            addr,
            config_path,
            log_path,
            exit: None,
            spawned,
            startup: None,
            _dir: dir,
        })
    }

    /// Polls `/health/startup` until it answers 200.
    pub fn wait_started(&mut self, timeout: Duration) {
        if let Err(e) = self.try_wait_started(timeout, STARTUP_POLL) {
            panic!("{e}; log:\n{}", self.log());
        }
    }

    /// Asks `/health/startup` every `poll` until it answers 200; returns
    /// the time from spawn to then (also kept: [`Agent::startup`]). The
    /// error says why not (the agent exited, or the timeout passed) and
    /// ends with the last lines of the agent's log.
    pub fn try_wait_started(&mut self, timeout: Duration, poll: Duration) -> io::Result<Duration> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(io::Error::other(format!(
                    "the agent exited ({status}) before /health/startup answered 200; log tail:\n{}",
                    self.log_tail(15)
                )));
            }
            match self.try_request("GET", "/health/startup") {
                Ok(r) if r.status == 200 => {
                    let startup = self.spawned.elapsed();
                    self.startup = Some(startup);
                    return Ok(startup);
                }
                Ok(r) => last = format!("{} {}", r.status, r.body),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the agent did not report started within {timeout:?} (last \
                         /health/startup: {last}); log tail:\n{}",
                        self.log_tail(15)
                    ),
                ));
            }
            std::thread::sleep(poll);
        }
    }

    /// Spawn to `/health/startup` = 200, once the agent has been seen
    /// started.
    pub fn startup(&self) -> Option<Duration> {
        self.startup
    }

    /// Address of the agent's HTTP server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("agent running")
    }

    /// The config file the agent was started with (rewrite it, then
    /// [`Agent::sighup`], to test reloads).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Replaces the config file's contents.
    pub fn rewrite_config(&self, config_toml: &str) {
        std::fs::write(&self.config_path, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config_path.display()));
    }

    /// Sends SIGHUP (reload runtime settings).
    pub fn sighup(&self) {
        sys::signal(self.pid(), libc::SIGHUP);
    }

    /// Everything the agent wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(b) => {
                let s = String::from_utf8_lossy(&b).into_owned();
                let lines: Vec<&str> = s.lines().collect();
                if lines.len() > 300 {
                    format!(
                        "[... {} earlier lines ...]\n{}",
                        lines.len() - 300,
                        lines[lines.len() - 300..].join("\n")
                    )
                } else {
                    s
                }
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_path.display()),
        }
    }

    /// Waits up to 10 s for `needle` in the agent's log and returns the log;
    /// panics with the log if it never comes.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the agent never logged {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `n` lines the agent wrote, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.exit = child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// One HTTP request; an I/O error is returned, not a panic.
    pub fn try_request(&self, method: &str, path: &str) -> std::io::Result<Response> {
        http::request(self.addr, method, path, HTTP_TIMEOUT)
    }

    /// One HTTP request; panics with the agent's log on an I/O error.
    pub fn request(&self, method: &str, path: &str) -> Response {
        self.try_request(method, path).unwrap_or_else(|e| {
            panic!(
                "{method} http://{}{path} failed: {e}; agent log:\n{}",
                self.addr,
                self.log()
            )
        })
    }

    /// `GET path` → (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.request("GET", path);
        (r.status, r.body)
    }

    /// `POST path` (empty body) → (status, body).
    pub fn post(&self, path: &str) -> (u16, String) {
        let r = self.request("POST", path);
        (r.status, r.body)
    }

    /// `POST path` with a JSON body → (status, body).
    pub fn post_json(&self, path: &str, body: &str) -> (u16, String) {
        let r = http::request_with_body(self.addr, "POST", path, body, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}; agent log:\n{}", self.log()));
        (r.status, r.body)
    }

    /// `GET path`, which must answer 200 with a JSON body.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path} answered {status}: {body}");
        parse_json(path, &body)
    }

    /// The first anomaly of `kind` in /api/v1/anomalies (active or
    /// recent), waiting up to 10 s for it.
    pub fn wait_for_anomaly(&self, kind: &str) -> serde_json::Value {
        self.wait_for_anomaly_since(kind, 0.0)
    }

    /// [`Agent::wait_for_anomaly`], among anomalies that started at or
    /// after `since` (Unix seconds): not one the shared machine's other
    /// activity opened before the test's incident.
    pub fn wait_for_anomaly_since(&self, kind: &str, since: f64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let report = self.get_json("/api/v1/anomalies");
            let found = ["active", "recent"].iter().find_map(|list| {
                report[*list]
                    .as_array()?
                    .iter()
                    .find(|a| a["kind"] == kind && a["start"].as_f64().unwrap_or(0.0) >= since)
                    .cloned()
            });
            if let Some(anomaly) = found {
                return anomaly;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} anomaly within 10 s: {report}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET /api/v1/status` as JSON.
    pub fn status_json(&self) -> serde_json::Value {
        self.get_json("/api/v1/status")
    }

    /// `GET /metrics`, parsed.
    pub fn metrics(&self) -> Scrape {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        Scrape::parse(&body)
    }

    /// `GET /metrics`, parsed; an I/O error, another status than 200 or a
    /// malformed exposition is returned, not a panic.
    pub fn try_metrics(&self) -> io::Result<Scrape> {
        let r = self.try_request("GET", "/metrics")?;
        if r.status != 200 {
            return Err(io::Error::other(format!(
                "GET /metrics answered {}: {}",
                r.status, r.body
            )));
        }
        Scrape::try_parse(&r.body).map_err(io::Error::other)
    }

    /// Re-scrapes every 100 ms until `pred` holds; returns the scrape that
    /// satisfied it, or `Err(last scrape)` after `timeout`.
    pub fn try_wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Scrape) -> bool,
    ) -> Result<Scrape, Scrape> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.metrics();
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like [`Agent::try_wait_for`], panicking with `what` on timeout.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&Scrape) -> bool,
    ) -> Scrape {
        self.try_wait_for(timeout, pred).unwrap_or_else(|_| {
            panic!(
                "timed out after {timeout:?} waiting for {what}; agent log:\n{}",
                self.log()
            )
        })
    }

    /// Scrapes every `spacing` until `f(scrape)` returns the same value on
    /// two consecutive scrapes (pick `spacing` longer than the collector
    /// interval, so an unchanged value means the collector has caught up).
    /// Panics after `timeout`.
    pub fn wait_stable<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        timeout: Duration,
        spacing: Duration,
        mut f: impl FnMut(&Scrape) -> T,
    ) -> Scrape {
        let deadline = Instant::now() + timeout;
        let mut prev_v = f(&self.metrics());
        let mut seen = vec![format!("{prev_v:?}")];
        loop {
            std::thread::sleep(spacing);
            let s = self.metrics();
            let v = f(&s);
            if v == prev_v {
                return s;
            }
            seen.push(format!("{v:?}"));
            if Instant::now() >= deadline {
                panic!(
                    "{what} did not settle within {timeout:?}; successive values: {}",
                    seen.join(", ")
                );
            }
            prev_v = v;
        }
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: libc::c_int) {
        sys::signal(self.pid(), sig);
    }

    /// Waits up to `timeout` for the agent to exit on its own (after a
    /// signal the test sent); `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_exit_status() {
            return Some(s);
        }
        let child = self.child.as_mut().expect("agent spawned");
        let s = sys::wait_timeout(child, timeout)?;
        self.exit = Some(s);
        Some(s)
    }

    /// Sends SIGTERM and waits up to `timeout`; returns the exit status and
    /// how long the exit took, or `None` if it was still running (it is then
    /// killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        if let Some(s) = self.try_exit_status() {
            return Some((s, Duration::ZERO));
        }
        let child = self.child.as_mut().expect("agent spawned");
        let t0 = Instant::now();
        sys::signal(child.id(), libc::SIGTERM);
        match sys::wait_timeout(child, timeout) {
            Some(s) => {
                self.exit = Some(s);
                Some((s, t0.elapsed()))
            }
            None => {
                eprintln!(
                    "the agent did not exit within {timeout:?} of SIGTERM; its threads:\n{}",
                    sys::where_threads_are(child.id())
                );
                let _ = child.kill();
                if let Ok(s) = child.wait() {
                    self.exit = Some(s);
                }
                None
            }
        }
    }
}

impl Agent {
    /// Sends SIGTERM and waits [`STOP_TIMEOUT`]; an error unless the agent
    /// exits 0 in time (it is then killed). The drop has nothing left to do.
    pub fn stop(mut self) -> io::Result<()> {
        match self.terminate(STOP_TIMEOUT) {
            Some((status, _)) if status.success() => Ok(()),
            Some((status, _)) => Err(io::Error::other(format!(
                "the agent exited with {status} on SIGTERM; log tail:\n{}",
                self.log_tail(15)
            ))),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the agent did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it. \
                     Log tail:\n{}",
                    self.log_tail(15)
                ),
            )),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let already_exited = self.exit.is_some();
        let stop_timeout = scaled(STOP_TIMEOUT);
        let outcome = self.terminate(stop_timeout);
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "---- agent log ({}) ----\n{}\n---- end of agent log ----",
                self.log_path.display(),
                self.log()
            );
            return;
        }
        match outcome {
            None => panic!(
                "the agent did not exit within {stop_timeout:?} of SIGTERM; killed it. Log:\n{}",
                self.log()
            ),
            Some((status, _)) if !status.success() && !already_exited => panic!(
                "the agent exited with {status} after SIGTERM (expected 0). Log:\n{}",
                self.log()
            ),
            _ => {}
        }
    }
}

/// Parses a JSON body; panics naming the endpoint and the body.
pub fn parse_json(what: &str, body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {body}"))
}
