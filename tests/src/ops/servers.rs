//! Real Prometheus (`prometheus`, Debian package `prometheus`) and
//! Alertmanager (`prometheus-alertmanager`) as child processes on
//! 127.0.0.1, each with a private config and data directory. Dropping one
//! sends SIGTERM, then SIGKILL after [`STOP_TIMEOUT`], and removes the
//! directory; they also get SIGTERM if the test process dies.
//!
//! The tests start them with [`Prometheus::start`] and
//! [`Alertmanager::start`] (panicking); `cargo xtask stack` and the
//! benchmark choose the intervals, directory, port and CPUs through
//! [`PrometheusConfig`] and [`Placement`] and get errors back.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::free_addr;
use crate::http::{self, Response};
use crate::ops::urlencode;
use crate::sys::{self, TempDir};

/// How long a server may take to answer `/-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = http::TIMEOUT;

/// Where and how a server runs. The default is what the tests use: a
/// temporary directory removed on drop, a free port on 127.0.0.1, any CPU,
/// log level `info`.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The server's directory (config, data, `server.log`), created if
    /// need be and kept after the server stops.
    pub dir: Option<PathBuf>,
    /// The address to listen on.
    pub addr: Option<SocketAddr>,
    /// CPUs to pin the server to (all when empty).
    pub cpus: Vec<usize>,
    /// `--log.level`.
    pub log_level: Option<&'static str>,
}

/// A server's directory: a temporary one, or one the caller keeps.
enum Dir {
    Temp(TempDir),
    Kept(PathBuf),
}

impl Dir {
    fn new(tag: &str, placement: &Placement) -> io::Result<Dir> {
        Ok(match &placement.dir {
            None => Dir::Temp(TempDir::new(tag)),
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| {
                    io::Error::new(e.kind(), format!("creating {}: {e}", d.display()))
                })?;
                Dir::Kept(d.clone())
            }
        })
    }

    fn path(&self) -> &Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }

    fn write(&self, name: &str, contents: &str) -> io::Result<PathBuf> {
        let p = self.path().join(name);
        std::fs::write(&p, contents)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", p.display())))?;
        Ok(p)
    }
}

/// A server child process with its own directory and log file.
pub struct Server {
    name: String,
    child: Option<Child>,
    addr: SocketAddr,
    log_path: PathBuf,
    // Last field: removed after the child is gone.
    dir: Dir,
}

impl Server {
    /// Spawns `program args...` (its output to `DIR/server.log`, pinned to
    /// `cpus`) and waits until `GET /-/ready` answers 200 on `addr`.
    fn start(
        name: &str,
        program: &str,
        args: &[String],
        addr: SocketAddr,
        dir: Dir,
        cpus: &[usize],
    ) -> io::Result<Server> {
        if !sys::have(program) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{program} is not installed; install it with `apt-get install {name}`"),
            ));
        }
        let log_path = dir.path().join("server.log");
        let (log, log2) = sys::log_file(&log_path)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        crate::process::set_up_child(&mut cmd, libc::SIGTERM, cpus);
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {program}: {e}")))?;
        let mut server = Server {
            name: name.to_string(),
            child: Some(child),
            addr,
            log_path,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(io::Error::other(format!(
                    "{} exited ({status}) before /-/ready answered; log:\n{}",
                    self.name,
                    self.log()
                )));
            }
            match http::request(self.addr, "GET", "/-/ready", HTTP_TIMEOUT) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status, r.body.trim()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} was not ready within {READY_TIMEOUT:?} (last: {last}); log:\n{}",
                        self.name,
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("server running")
    }

    /// The server's directory (config, data, log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The last 200 lines of the server's log.
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(200)..].join("\n")
    }

    /// `GET path`; panics with the server's log on an I/O error.
    pub fn get(&self, path: &str) -> Response {
        http::request(self.addr, "GET", path, HTTP_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "GET http://{}{path} ({}) failed: {e}; log:\n{}",
                self.addr,
                self.name,
                self.log()
            )
        })
    }

    /// `GET path` as JSON (any status: APIs put their errors in the body).
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path);
        let v = serde_json::from_str(&r.body).unwrap_or_else(|e| {
            panic!(
                "GET {path} ({}) answered {} with a non-JSON body ({e}): {}",
                self.name, r.status, r.body
            )
        });
        (r.status, v)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sys::signal(child.id(), libc::SIGTERM);
            if sys::wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// What Prometheus scrapes and evaluates: `targets` as job `sonde`.
#[derive(Debug, Clone, Copy)]
pub struct PrometheusConfig<'a> {
    pub targets: &'a [SocketAddr],
    /// Scrape interval, scrape timeout and rule evaluation interval
    /// (`1s`, `5s`).
    pub interval: &'a str,
    /// Rule file text, written to `rules.yml` in the server's directory.
    pub rules: Option<&'a str>,
    /// A rule file loaded where it is.
    pub rule_file: Option<&'a Path>,
    /// Where to send alerts.
    pub alertmanager: Option<SocketAddr>,
    /// The targets' `node` label, which the dashboards choose and name
    /// agents by: this name for every target, or (`None`) each target's
    /// host, as docs/deploy.md does for hosts listed by name.
    pub node: Option<&'a str>,
}

impl PrometheusConfig<'_> {
    /// `prometheus.yml`; `rules_yml` is where the `rules` text was written.
    fn render(&self, rules_yml: Option<&Path>) -> String {
        let quoted = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let i = self.interval;
        let mut config = format!(
            "global:\n  scrape_interval: {i}\n  scrape_timeout: {i}\n  evaluation_interval: {i}\n"
        );
        let files: Vec<&Path> = rules_yml.into_iter().chain(self.rule_file).collect();
        if !files.is_empty() {
            config.push_str("rule_files:\n");
            for f in files {
                config.push_str(&format!("  - {}\n", f.display()));
            }
        }
        if let Some(am) = self.alertmanager {
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [{}]\n",
                quoted(&[am])
            ));
        }
        config.push_str(&format!(
            "scrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: [{}]\n",
            quoted(self.targets)
        ));
        match self.node {
            Some(node) => config.push_str(&format!("        labels: {{node: '{node}'}}\n")),
            None => config.push_str(
                "    relabel_configs:\n      - source_labels: [__address__]\n        \
                 regex: '(.+):\\d+'\n        target_label: node\n",
            ),
        }
        config
    }
}

/// A Prometheus server scraping `targets` as job `sonde` every second (each
/// target's host as its `node` label, no `cluster` label) and evaluating its
/// rules every second.
pub struct Prometheus {
    pub server: Server,
}

impl Prometheus {
    /// Starts Prometheus with `rules` (rule file text, if any) and
    /// `alertmanager` (where to send alerts, if any).
    pub fn start(
        targets: &[SocketAddr],
        rules: Option<&str>,
        alertmanager: Option<SocketAddr>,
    ) -> Prometheus {
        let config = PrometheusConfig {
            targets,
            interval: "1s",
            rules,
            rule_file: None,
            alertmanager,
            node: None,
        };
        Prometheus::launch(&config, &Placement::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts Prometheus on `config`, placed as `placement` says, and waits
    /// until it is ready.
    pub fn launch(config: &PrometheusConfig, placement: &Placement) -> io::Result<Prometheus> {
        let dir = Dir::new("prometheus", placement)?;
        let rules_yml = match config.rules {
            Some(rules) => Some(dir.write("rules.yml", rules)?),
            None => None,
        };
        let config_path = dir.write("prometheus.yml", &config.render(rules_yml.as_deref()))?;
        let addr = placement.addr.map_or_else(free_addr, Ok)?;
        let args = vec![
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={addr}"),
            format!("--log.level={}", placement.log_level.unwrap_or("info")),
        ];
        Ok(Prometheus {
            server: Server::start(
                "prometheus",
                "prometheus",
                &args,
                addr,
                dir,
                &placement.cpus,
            )?,
        })
    }

    /// An instant query through `/api/v1/query`: the `result` array, or the
    /// API's error (`errorType: error`).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        self.query_path(&format!("/api/v1/query?query={}", urlencode(expr)))
    }

    /// [`Prometheus::query`] evaluated at `time` (Unix seconds).
    pub fn query_at(&self, expr: &str, time: f64) -> Result<Vec<Value>, String> {
        self.query_path(&format!(
            "/api/v1/query?query={}&time={time:.3}",
            urlencode(expr)
        ))
    }

    fn query_path(&self, path: &str) -> Result<Vec<Value>, String> {
        let (status, v) = self.server.get_json(path);
        if v["status"] != "success" {
            return Err(format!(
                "HTTP {status}, {}: {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            ));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `targets` targets of job `sonde` have at least `scrapes`
    /// samples of `up` in the last minute, all of them 1.
    pub fn wait_scraped(&self, targets: usize, scrapes: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let expr = format!(
            "min_over_time(up{{job=\"sonde\"}}[1m]) == 1 and count_over_time(up{{job=\"sonde\"}}[1m]) >= {scrapes}"
        );
        loop {
            let got = self.query(&expr).unwrap_or_default();
            if got.len() >= targets {
                return;
            }
            if Instant::now() >= deadline {
                let (_, t) = self.server.get_json("/api/v1/targets");
                panic!(
                    "Prometheus did not scrape {targets} target(s) {scrapes} times within \
                     {timeout:?}; /api/v1/targets: {t}\nlog:\n{}",
                    self.server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Names of the alerts Prometheus itself has firing (`/api/v1/alerts`).
    pub fn firing(&self) -> Vec<Value> {
        let (_, v) = self.server.get_json("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect()
    }
}

/// An Alertmanager with one receiver that notifies nobody: the caller reads
/// what arrived through `/api/v2/alerts`. Clustering is off.
pub struct Alertmanager {
    pub server: Server,
}

impl Alertmanager {
    /// Groups alerts after 1 s, notifies every 1 s.
    pub fn start() -> Alertmanager {
        Alertmanager::launch("1s", "1s", &Placement::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts Alertmanager with these grouping delays, placed as
    /// `placement` says, and waits until it is ready.
    pub fn launch(
        group_wait: &str,
        group_interval: &str,
        placement: &Placement,
    ) -> io::Result<Alertmanager> {
        let dir = Dir::new("alertmanager", placement)?;
        let config = dir.write(
            "alertmanager.yml",
            &format!(
                "route:\n  receiver: default\n  group_by: [alertname]\n  group_wait: {group_wait}\n  \
                 group_interval: {group_interval}\n  repeat_interval: 1h\nreceivers:\n  - name: default\n"
            ),
        )?;
        let addr = placement.addr.map_or_else(free_addr, Ok)?;
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={addr}"),
            "--cluster.listen-address=".to_string(),
            format!("--log.level={}", placement.log_level.unwrap_or("info")),
        ];
        Ok(Alertmanager {
            server: Server::start(
                "prometheus-alertmanager",
                "prometheus-alertmanager",
                &args,
                addr,
                dir,
                &placement.cpus,
            )?,
        })
    }

    /// The active alerts Alertmanager holds (`GET /api/v2/alerts`).
    pub fn alerts(&self) -> Vec<Value> {
        let (status, v) = self.server.get_json("/api/v2/alerts?active=true");
        assert_eq!(status, 200, "GET /api/v2/alerts answered {status}: {v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// Polls until an alert named `name` whose labels include `labels`
    /// arrives; returns it, or `Err(names seen)` after `timeout`.
    pub fn wait_for(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(Value, Duration), Vec<String>> {
        let t0 = Instant::now();
        loop {
            let alerts = self.alerts();
            if let Some(a) = alerts.iter().find(|a| {
                a["labels"]["alertname"] == name
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            }) {
                return Ok((a.clone(), t0.elapsed()));
            }
            if t0.elapsed() >= timeout {
                return Err(alerts
                    .iter()
                    .map(|a| a["labels"].to_string())
                    .collect::<Vec<_>>());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
