//! A cgroup (v2) a test creates, runs a command in, and removes.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

/// The cgroup2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
/// hosts).
pub fn v2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("cgroup2 is not mounted")
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
        let name = format!("{name}-{}", std::process::id());
        let dir = v2_root().join(&name);
        if !dir.exists() {
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        }
        TestCgroup { dir, name }
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
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {command} {}",
            self.dir.display(),
            args.join(" ")
        );
        Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap_or_else(|e| panic!("running {command} in {}: {e}", self.dir.display()))
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
