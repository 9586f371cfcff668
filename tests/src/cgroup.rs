//! A cgroup (v2) a test creates, runs a command in, and removes.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

/// The cgroup2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
/// hosts).
pub fn v2_root() -> PathBuf {
    v2_mount().expect("cgroup2 is not mounted")
}

/// The cgroup2 mount, if there is one.
pub fn v2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// `some total` (µs) of a cgroup v2 directory's cpu.pressure: the time at
/// least one of its tasks was runnable but waiting for a CPU.
pub fn cpu_pressure_some_us(dir: &Path) -> Option<f64> {
    pressure_some_us(dir, "cpu")
}

/// `some total` (µs) of a cgroup v2 directory's io.pressure: the time at
/// least one of its tasks waited on I/O. A cgroup's, not the machine's
/// (/proc/pressure/io): the machine's averages the CPUs by their busy
/// time, so a task stuck on I/O while other CPUs run other work counts
/// for less than the wall time it waited.
pub fn io_pressure_some_us(dir: &Path) -> Option<f64> {
    pressure_some_us(dir, "io")
}

fn pressure_some_us(dir: &Path, resource: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(format!("{resource}.pressure"))).ok()?;
    text.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// `usage_usec` of a cgroup v2 directory's cpu.stat: the CPU time its
/// tasks used, by the kernel's own accounting (there without the cpu
/// controller).
pub fn cpu_usage_us(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()
}

/// How long a cgroup's threads have waited for a CPU (ns), by the
/// scheduler's own accounting: `run_delay`, the second field of each
/// thread's /proc/TID/schedstat, summed over the threads in it now.
pub fn run_delay_ns(dir: &Path) -> u64 {
    let threads = std::fs::read_to_string(dir.join("cgroup.threads")).unwrap_or_default();
    threads
        .lines()
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/{}/schedstat", tid.trim())).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// A child of the cgroup2 root, removed on drop (once its processes are
/// gone).
pub struct TestCgroup {
    dir: PathBuf,
    name: String,
}

impl TestCgroup {
    /// Creates `/NAME-PID`.
    pub fn new(name: &str) -> TestCgroup {
        TestCgroup::named(&format!("{name}-{}", std::process::id()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates (or takes over) `/NAME` exactly, for a name that must be
    /// known in advance (the evaluation's anomalies must name it).
    pub fn named(name: &str) -> io::Result<TestCgroup> {
        TestCgroup::at(v2_root().join(name))
    }

    /// Creates (or takes over) the cgroup directory `dir` in any
    /// hierarchy (a cgroup v1 controller's too), named by its last
    /// component.
    pub fn at(dir: PathBuf) -> io::Result<TestCgroup> {
        if !dir.exists() {
            std::fs::create_dir(&dir).map_err(|e| {
                io::Error::new(e.kind(), format!("creating cgroup {}: {e}", dir.display()))
            })?;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(TestCgroup { dir, name })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its path as the agent names it: `/NAME-PID`.
    pub fn label(&self) -> String {
        format!("/{}", self.name)
    }

    /// Runs `command ARGS...` inside the cgroup (a shell moves itself in,
    /// then becomes the command) and waits for it.
    pub fn run(&self, command: &str, args: &[&str]) -> ExitStatus {
        self.command(command, args)
            .status()
            .unwrap_or_else(|e| panic!("running {command} in {}: {e}", self.dir.display()))
    }

    /// `command ARGS...` to be run inside the cgroup: a shell that moves
    /// itself in, then becomes the command.
    pub fn command<S: AsRef<str>>(&self, command: &str, args: &[S]) -> Command {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {command} {}",
            self.dir.display(),
            args.join(" ")
        );
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
