//! Runs `sonde-workload` subcommands as child processes (in the root network
//! namespace or inside a test namespace), killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::die_with_parent;
use crate::net::NetNs;
use crate::sys;

/// A running workload. Its pid is the one it printed itself (so it is the
/// workload's even when started through `ip netns exec`).
pub struct Workload {
    child: Child,
    pid: u32,
    desc: String,
    lines: Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Workload {
    /// Starts `sonde-workload ARGS...` in the root namespace.
    pub fn spawn(args: &[&str]) -> Workload {
        let mut c = Command::new(sys::workload_bin());
        c.args(args);
        Workload::start(c)
    }

    /// Starts `sonde-workload ARGS...` inside `ns`.
    pub fn spawn_in(ns: &NetNs, args: &[&str]) -> Workload {
        let bin = sys::workload_bin();
        let mut all = vec![bin.to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        Workload::start(ns.exec(&all))
    }

    /// Runs `sonde-workload ARGS...` to completion (root namespace); panics
    /// unless it exits 0 within `timeout`. Returns its pid and stdout lines
    /// after the pid.
    pub fn run(args: &[&str], timeout: Duration) -> (u32, Vec<String>) {
        let w = Workload::spawn(args);
        let pid = w.pid();
        (pid, w.wait_success(timeout))
    }

    /// Like [`Workload::run`], inside `ns`.
    pub fn run_in(ns: &NetNs, args: &[&str], timeout: Duration) -> (u32, Vec<String>) {
        let w = Workload::spawn_in(ns, args);
        let pid = w.pid();
        (pid, w.wait_success(timeout))
    }

    fn start(mut c: Command) -> Workload {
        let desc = format!("{c:?}");
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut c);
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut w = Workload {
            child,
            pid: 0,
            desc,
            lines: rx,
            stdout_seen: Vec::new(),
            stderr,
        };
        let first = w.next_line(Duration::from_secs(10));
        w.pid = first.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{}: first line should be its pid, got {first:?}; stderr: {}",
                w.desc,
                w.stderr()
            )
        });
        w
    }

    /// The workload's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the workload wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn next_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.stdout_seen.push(l.clone());
                l
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no output line within {timeout:?}; stdout so far: {:?}; stderr: {}",
                self.desc,
                self.stdout_seen,
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "{}: exited ({status:?}) before printing the expected line; stdout: {:?}; \
                     stderr: {}",
                    self.desc,
                    self.stdout_seen,
                    self.stderr()
                )
            }
        }
    }

    /// Waits for a stdout line containing `needle` (e.g. `ready`).
    pub fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.next_line(left.max(Duration::from_millis(1)));
            if l.contains(needle) {
                return l;
            }
        }
    }

    /// Waits for the workload to exit within `timeout` (killing it if it
    /// does not) and returns its status and remaining stdout lines.
    pub fn wait(mut self, timeout: Duration) -> (Option<ExitStatus>, Vec<String>) {
        let status = sys::wait_timeout(&mut self.child, timeout);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            rest.push(l);
        }
        (status, rest)
    }

    /// Waits for the workload and panics unless it exited 0 within `timeout`.
    pub fn wait_success(self, timeout: Duration) -> Vec<String> {
        let desc = self.desc.clone();
        let stderr = Arc::clone(&self.stderr);
        let (status, rest) = self.wait(timeout);
        std::thread::sleep(Duration::from_millis(20));
        let stderr = stderr.lock().unwrap().clone();
        match status {
            Some(s) if s.success() => rest,
            Some(s) => panic!("{desc} failed ({s}); stdout: {rest:?}; stderr: {stderr}"),
            None => panic!("{desc} did not finish within {timeout:?}; killed it; stderr: {stderr}"),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first: `ip netns exec` forwards nothing, but it execs
            // the workload, so the child pid is the workload's.
            sys::signal(self.child.id(), libc::SIGTERM);
            if sys::wait_timeout(&mut self.child, Duration::from_secs(2)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
