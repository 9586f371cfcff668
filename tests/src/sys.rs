//! Environment checks, binary paths and command helpers.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Returns `true` when the test may run. The tests load eBPF programs and
/// create network namespaces, so they need root: without it they panic when
/// `CI` is set (CI must never silently skip them) and otherwise print
/// `SKIPPED: needs root` and return `false`.
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "the sonde integration tests need root (they load eBPF programs and create network \
             namespaces); CI is set, so refusing to skip them. Run them as root: \
             cargo test -p sonde-tests -- --test-threads=1"
        );
    }
    println!("SKIPPED: needs root");
    false
}

/// `path` created (truncated) for a child's output: the handle for its
/// stdout and a second one for its stderr, so both land in one log.
pub fn log_file(path: &std::path::Path) -> io::Result<(std::fs::File, std::fs::File)> {
    let out = std::fs::File::create(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
    let err = out.try_clone()?;
    Ok((out, err))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The directory cargo put the test binaries' sibling executables in
/// (`target/<profile>`), derived from the running test executable, which
/// lives in `target/<profile>/deps`.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? == "deps" {
        Some(deps.parent()?.to_path_buf())
    } else {
        Some(deps.to_path_buf())
    }
}

fn find_bin(env_var: &str, name: &str, build_hint: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env_var}={} does not name a file; {build_hint}",
            p.display()
        );
        return p;
    }
    let mut candidates = Vec::new();
    if let Some(d) = profile_dir() {
        candidates.push(d.join(name));
    }
    candidates.push(workspace_dir().join("target/debug").join(name));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "cannot find the {name} binary (looked at {}); {build_hint}, or point {env_var} at it",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The agent binary: `$SONDE_BIN`, else `target/<profile>/sonde`, else
/// `<workspace>/target/debug/sonde`.
pub fn sonde_bin() -> PathBuf {
    find_bin("SONDE_BIN", "sonde", "build it with `cargo build -p sonde`")
}

/// A `Command` for the agent binary with every `SONDE_*` variable removed
/// from its environment: the agent reads `SONDE_*` variables as config
/// overrides (and rejects unknown ones), while the tests use `SONDE_BIN` and
/// `SONDE_WORKLOAD_BIN` for themselves and configure the agent only through
/// its config file and flags.
pub fn sonde_command() -> Command {
    let mut c = Command::new(sonde_bin());
    clear_sonde_env(&mut c);
    c
}

/// Removes every `SONDE_*` and `OTEL_*` variable from `c`'s environment
/// (the agent reads the standard `OTEL_*` ones for its OTLP export; a
/// developer's shell must not point the tests' agents at a collector).
pub fn clear_sonde_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k_str = k.to_string_lossy();
        if k_str.starts_with("SONDE_") || k_str.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
}

/// The workload binary: `$SONDE_WORKLOAD_BIN`, else next to the test binary,
/// else `<workspace>/target/debug/sonde-workload`.
pub fn workload_bin() -> PathBuf {
    find_bin(
        "SONDE_WORKLOAD_BIN",
        "sonde-workload",
        "build it with `cargo build -p sonde-tests --bins`",
    )
}

/// How long [`output`] and [`must`] let a command run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a command to completion with a time limit, capturing its output.
/// Panics if it cannot be started or outlives `timeout` (it is killed).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    try_run_with_timeout(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run_with_timeout`], returning an error (naming the command and,
/// on a timeout, what it printed) instead of panicking.
pub fn try_run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {desc}: {e}")))?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = t_out.join().unwrap_or_default();
            let stderr = t_err.join().unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{desc} did not finish within {timeout:?}; killed it.\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                ),
            ));
        }
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Runs a command that must succeed within [`COMMAND_TIMEOUT`]; returns its
/// stdout, or an error with the command, status and output.
pub fn output(cmd: &mut Command) -> io::Result<String> {
    let desc = format!("{cmd:?}");
    let out = try_run_with_timeout(cmd, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{desc} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`output`], panicking with its error.
pub fn must(cmd: &mut Command) -> String {
    output(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a command and ignores its result (cleanup paths).
pub fn quiet(cmd: &mut Command) {
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `Command::new(program).args(args)`.
pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where each thread of `pid` is, for a process that did not exit in time:
/// its state and wait channel from /proc, and its kernel stack (root only),
/// so a hang names the syscall or kernel wait it sat in.
pub fn where_threads_are(pid: u32) -> String {
    let tasks = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(d) => d,
        Err(e) => return format!("pid {pid}: cannot read /proc/{pid}/task: {e}"),
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let dir = t.path();
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|e| format!("({f}: {e})"))
        };
        // stat's third field is the state; the comm before it may hold spaces.
        let stat = read("stat");
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_owned();
        out.push_str(&format!(
            "tid {} ({}) state {} wchan {} syscall {}\n{}\n",
            t.file_name().to_string_lossy(),
            read("comm"),
            state,
            read("wchan"),
            read("syscall"),
            read("stack")
        ));
    }
    out
}

/// Sends `sig` to `pid`; panics if that fails for any reason but the process
/// being gone already.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            panic!("kill({pid}, {sig}): {e}");
        }
    }
}

/// Where tracefs belongs.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Whether tracefs is mounted on [`TRACEFS`].
pub fn tracefs_mounted() -> io::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| io::Error::new(e.kind(), format!("reading /proc/self/mounts: {e}")))?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next(), f.next(), f.next());
        dir == Some(TRACEFS) && kind == Some("tracefs")
    }))
}

/// Mounts tracefs on [`TRACEFS`] unless it is mounted already (a fresh
/// machine has an empty directory there); bpftrace needs it, the agent
/// mounts it itself. With `sudo`, the mount runs through `sudo` (with the
/// terminal, so sudo can ask for a password).
pub fn mount_tracefs(sudo: bool) -> io::Result<()> {
    if tracefs_mounted()? {
        return Ok(());
    }
    if !std::path::Path::new(TRACEFS).is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{TRACEFS} does not exist: this kernel has no tracefs, which the syscall \
                 probes and bpftrace need"
            ),
        ));
    }
    let mut mount = if sudo {
        cmd("sudo", &["mount"])
    } else {
        Command::new("mount")
    };
    mount.args(["-t", "tracefs", "tracefs", TRACEFS]);
    let desc = format!("{mount:?}");
    let status = mount
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {desc}: {e}")))?;
    if !status.success() {
        return Err(io::Error::other(format!("{desc} failed ({status})")));
    }
    Ok(())
}

/// [`mount_tracefs`] as root, panicking on failure.
pub fn ensure_tracefs() {
    mount_tracefs(false).unwrap_or_else(|e| panic!("{e}"));
}

/// The first executable called `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether `program` is found on `PATH`.
pub fn have(program: &str) -> bool {
    which(program).is_some()
}

/// Panics unless `program` is installed, naming the Debian package to install.
pub fn need_tool(program: &str, package: &str) {
    assert!(
        have(program),
        "{program} is not installed; install it with `apt-get install {package}`"
    );
}

/// The `(program, Debian package)` pairs whose program is not on `PATH`,
/// each as "program (apt-get install package)".
pub fn missing_tools(tools: &[(&str, &str)]) -> Vec<String> {
    tools
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(program, package)| format!("{program} (apt-get install {package})"))
        .collect()
}

/// A fresh, empty scratch directory, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sonde-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        // Readable by unprivileged users, for the tests that drop privileges.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
        TempDir { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
