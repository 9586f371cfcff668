//! bpftrace as an independent referee: counts the same kernel events the
//! agent counts, so a test can check the agent against a second tool. The
//! benchmark runs the same launcher to compare Sonde's cost with
//! bpftrace's ([`Bpftrace::launch`], which also times the attach).

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::die_with_parent;
use crate::sys;

/// How long bpftrace gets to exit on SIGINT before the wait is reported
/// (and, twice over, before it fails).
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// A running bpftrace script, stopped with SIGINT.
pub struct Bpftrace {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    ready: Duration,
}

impl Bpftrace {
    /// Starts `bpftrace -e PROGRAM` and waits until it printed `Attaching`
    /// and then `marker` (have a `BEGIN { printf("MARKER\n"); }` in the
    /// program: BEGIN runs once the probes are attached).
    pub fn start(program: &str, marker: &str) -> Bpftrace {
        sys::need_tool("bpftrace", "bpftrace");
        let b = Bpftrace::launch(program, marker).unwrap_or_else(|e| panic!("{e}"));
        // Give the probes a moment past BEGIN before the workload starts.
        std::thread::sleep(Duration::from_millis(300));
        b
    }

    /// Like [`Bpftrace::start`] without the pause after `marker`,
    /// returning the error (bpftrace missing or exited, no marker in
    /// time) instead of panicking.
    pub fn launch(program: &str, marker: &str) -> io::Result<Bpftrace> {
        if !sys::have("bpftrace") {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "bpftrace is not installed; install it with `apt-get install bpftrace`",
            ));
        }
        sys::mount_tracefs(false)?;
        let spawned = Instant::now();
        let mut c = Command::new("bpftrace");
        c.arg("-e")
            .arg(program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut c);
        let mut child = c
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start bpftrace: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            sink.lock().unwrap().push_str(&s);
        });
        let mut b = Bpftrace {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
            ready: Duration::ZERO,
        };
        b.wait_line("Attaching", Duration::from_secs(60))?;
        b.wait_line(marker, Duration::from_secs(30))?;
        b.ready = spawned.elapsed();
        Ok(b)
    }

    /// Spawn to `marker` (BEGIN runs once every probe is attached).
    pub fn ready_after(&self) -> Duration {
        self.ready
    }

    /// bpftrace's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_line(&mut self, needle: &str, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l);
                    if hit {
                        return Ok(());
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    return Err(io::Error::other(format!(
                        "bpftrace did not print {needle:?} within {timeout:?}; stdout: {:?}; \
                         stderr: {}",
                        self.seen,
                        self.stderr.lock().unwrap()
                    )));
                }
            }
        }
    }

    /// Stops bpftrace with SIGINT and returns everything it printed.
    pub fn stop(mut self) -> String {
        sys::signal(self.child.id(), libc::SIGINT);
        if sys::wait_timeout(&mut self.child, STOP_PATIENCE).is_none() {
            // Once, in CI, bpftrace sat past 30 s after SIGINT. Say where
            // it was, and give a slow exit (its probes' detach waits for
            // the kernel's grace periods) as long again before failing.
            let threads = sys::where_threads_are(self.child.id());
            let printed = self.seen.join("\n");
            if sys::wait_timeout(&mut self.child, STOP_PATIENCE).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "bpftrace did not exit within {:?} of SIGINT; its threads at {STOP_PATIENCE:?}:\n\
                     {threads}\nstdout so far: {printed}\nstderr: {}",
                    STOP_PATIENCE * 2,
                    self.stderr()
                );
            }
            eprintln!(
                "warning: bpftrace took over {STOP_PATIENCE:?} to exit on SIGINT; its threads \
                 then:\n{threads}"
            );
        }
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }

    /// What bpftrace wrote to stderr.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of a scalar map in bpftrace's exit output (`@name: 123`), or 0
/// when the map was never written (bpftrace then prints nothing for it).
pub fn scalar(output: &str, map: &str) -> u64 {
    let prefix = format!("{map}: ");
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("bpftrace printed {map}: {v:?}, not a number: {e}"))
        })
        .unwrap_or(0)
}
