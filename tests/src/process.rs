//! Child processes for long measurement runs (the benchmark, the detector
//! evaluation, the stack): output to files in the run's scratch directory
//! (no pipe can fill up and stall a child), optional CPU pinning and
//! network namespace, and a stop on drop so an error anywhere leaves
//! nothing running. Errors are returned, not panics: the callers report
//! a failed scenario and go on. (The tests' own workload runs through
//! [`crate::Workload`], which reads its pid from its first line.)

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use std::io;

/// An error that names what failed.
fn error(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// `e` with `what` in front of its message.
fn context(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// How long a child gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The run's scratch directory (logs, configs, Prometheus' storage),
/// removed and forgotten by [`Scratch`]'s drop, so one process can hold
/// several runs in turn (`xtask test` runs bench and eval as root).
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Owns the scratch directory; create one at the start of a run and keep
/// it until the end.
pub struct Scratch;

impl Scratch {
    pub fn create() -> io::Result<Scratch> {
        let mut current = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = current.as_ref() {
            return Err(error(format!(
                "a run is using the scratch directory {} already",
                dir.display()
            )));
        }
        let dir = std::env::temp_dir().join(format!("sonde-bench-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(context(format!("removing {}", dir.display())))?;
        }
        fs::create_dir_all(&dir).map_err(context(format!("creating {}", dir.display())))?;
        *current = Some(dir);
        Ok(Scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut current = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = current.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A fresh path `NNN-name` in the scratch directory.
pub fn scratch_path(name: &str) -> PathBuf {
    let dir = SCRATCH
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("{:03}-{name}", SEQ.fetch_add(1, Ordering::Relaxed)))
}

/// A command; `ip netns exec NS` in front when `netns` is given.
pub fn command(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Makes `cmd`'s child receive `death_signal` when this process dies (so a
/// crashed or killed run leaves nothing behind) and, unless `cpus` is
/// empty, run pinned to `cpus`.
pub fn set_up_child(cmd: &mut Command, death_signal: libc::c_int, cpus: &[usize]) {
    let cpus = cpus.to_vec();
    // SAFETY: prctl and sched_setaffinity are async-signal-safe; the
    // closure only reads the captured Vec and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if !cpus.is_empty() {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for &c in &cpus {
                    libc::CPU_SET(c, &mut set);
                }
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A running child. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr to files; it dies with xtask.
    pub fn spawn(name: &str, cmd: Command) -> io::Result<Proc> {
        Proc::spawn_on(name, cmd, &[])
    }

    /// Like [`Proc::spawn`], pinned to `cpus` (all CPUs when empty).
    pub fn spawn_on(name: &str, cmd: Command, cpus: &[usize]) -> io::Result<Proc> {
        let stdout = scratch_path(&format!("{name}.out"));
        let stderr = stdout.with_extension("err");
        Proc::spawn_with(name, cmd, stdout, Some(stderr), cpus)
    }

    /// Like [`Proc::spawn`], stdout and stderr both to `log` (kept after
    /// the run, for a human to read).
    pub fn spawn_logged(name: &str, cmd: Command, log: &Path) -> io::Result<Proc> {
        Proc::spawn_with(name, cmd, log.to_path_buf(), None, &[])
    }

    fn spawn_with(
        name: &str,
        mut cmd: Command,
        stdout: PathBuf,
        stderr: Option<PathBuf>,
        cpus: &[usize],
    ) -> io::Result<Proc> {
        let shown = format!("{cmd:?}");
        let file =
            |p: &Path| fs::File::create(p).map_err(context(format!("creating {}", p.display())));
        let out = file(&stdout)?;
        let err = match &stderr {
            Some(p) => file(p)?,
            None => out.try_clone()?,
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        set_up_child(&mut cmd, libc::SIGKILL, cpus);
        let child = cmd
            .spawn()
            .map_err(context(format!("could not start {shown}")))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            stderr: stderr.unwrap_or_else(|| stdout.clone()),
            stdout,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The last lines of its stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let s = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits until a stdout line contains `needle`; returns that line.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.try_exit() {
                // It may have written the line just before exiting.
                if let Some(line) = self.stdout().lines().find(|l| l.contains(needle)) {
                    return Ok(line.to_owned());
                }
                return Err(error(format!(
                    "{} exited ({status}) before printing {needle:?}; stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                )));
            }
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "{} did not print {needle:?} within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(self.pid() as libc::pid_t, sig) } != 0 {
            return Err(error(format!(
                "signal {sig} to {} ({}): {}",
                self.name,
                self.pid(),
                io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// True while the child runs.
    pub fn running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for the child to exit by itself; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} did not finish within {timeout:?}: killed", self.name),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for a clean exit and returns the child's stdout.
    pub fn finish(mut self, timeout: Duration) -> io::Result<String> {
        let status = self.wait(timeout)?;
        if !status.success() {
            return Err(error(format!(
                "{} failed ({status}); stderr:\n{}",
                self.name,
                self.stderr_tail()
            )));
        }
        Ok(self.stdout())
    }

    /// SIGTERM, then waits for the exit (SIGKILL after a grace period);
    /// returns the exit status and stdout.
    pub fn stop(mut self) -> io::Result<(ExitStatus, String)> {
        if self.try_exit().is_none() {
            self.signal(libc::SIGTERM)?;
        }
        let status = self.wait(STOP_GRACE)?;
        Ok((status, self.stdout()))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        let _ = self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.try_exit().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
    }
}

/// `key value` pairs from a result line such as `calls 10 elapsed_ns 99`.
pub fn field(line: &str, key: &str) -> io::Result<f64> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            let v = words.next().unwrap_or_default();
            return v
                .parse()
                .map_err(|e| error(format!("{key} in {line:?} is not a number: {e}")));
        }
    }
    Err(error(format!("no {key} in {line:?}")))
}
