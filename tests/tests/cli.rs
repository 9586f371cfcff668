//! The command line: exit codes and messages for config, usage and
//! environment errors, `check`, `--version`, and a clean detach on
//! SIGTERM/SIGINT.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sonde_tests::agent::free_port;
use sonde_tests::sys::{self, TempDir, cmd, must, run_with_timeout};
use sonde_tests::{Agent, Config, LAB_IF, Lab, require_root};

const RUN_TIMEOUT: Duration = Duration::from_secs(30);

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    desc: String,
}

impl Ran {
    fn from(desc: String, out: Output) -> Ran {
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            desc,
        }
    }

    fn expect_code(&self, code: i32) -> &Ran {
        assert_eq!(
            self.code,
            Some(code),
            "{} exited with {:?}, expected {code}.\nstdout:\n{}\nstderr:\n{}",
            self.desc,
            self.code,
            self.stdout,
            self.stderr
        );
        self.no_panic()
    }

    fn no_panic(&self) -> &Ran {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "{} panicked:\n{}{}",
            self.desc,
            self.stdout,
            self.stderr
        );
        self
    }

    fn stderr_mentions(&self, needle: &str) -> &Ran {
        assert!(
            self.stderr.contains(needle),
            "{}: stderr should mention {needle:?}:\n{}",
            self.desc,
            self.stderr
        );
        self
    }
}

/// Runs `sonde ARGS...` (optionally through a privilege-dropping wrapper)
/// and waits for it to exit.
fn sonde(wrapper: &[&str], args: &[&str]) -> Ran {
    let bin = sys::sonde_bin();
    let mut c = if let Some((first, rest)) = wrapper.split_first() {
        let mut c = Command::new(first);
        c.args(rest).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    sys::clear_sonde_env(&mut c);
    c.args(args);
    let desc = format!("{c:?}");
    let out = run_with_timeout(&mut c, RUN_TIMEOUT);
    Ran::from(desc, out)
}

/// `sonde run --config <config> --listen 127.0.0.1:<free> ARGS...`.
fn run_with_config(dir: &TempDir, config: &str, args: &[&str]) -> Ran {
    let path = dir.write("sonde.toml", config);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all = vec![
        "run",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    all.extend_from_slice(args);
    sonde(&[], &all)
}

#[test]
fn unknown_config_key_is_a_usage_error() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("cli");
    let config = format!("bogus = 1\n{}", Config::new().render());
    run_with_config(&dir, &config, &[])
        .expect_code(2)
        .stderr_mentions("bogus");
}

#[test]
fn wrongly_typed_config_value_is_a_usage_error() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("cli");
    let config = format!("listen = 5\n{}", Config::new().render());
    run_with_config(&dir, &config, &[])
        .expect_code(2)
        .stderr_mentions("listen");
}

#[test]
fn unknown_interface_is_a_usage_error() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("cli");
    let config = Config::new().set("network", "enabled", "true").render();
    run_with_config(&dir, &config, &["--interface", "does-not-exist0"])
        .expect_code(2)
        .stderr_mentions("does-not-exist0");
}

#[test]
fn listen_port_in_use_is_a_runtime_error() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("cli");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = taken.local_addr().unwrap().to_string();
    let path = dir.write("sonde.toml", &Config::new().render());
    sonde(
        &[],
        &["run", "--config", path.to_str().unwrap(), "--listen", &addr],
    )
    .expect_code(1)
    .stderr_mentions("in use");
    drop(taken);
}

#[test]
fn unprivileged_run_names_the_missing_capability() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("cli");
    let path = dir.write("sonde.toml", &Config::new().render());
    let listen = format!("127.0.0.1:{}", free_port());
    let wrapper: &[&str] = if sys::have("setpriv") {
        &[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ]
    } else {
        &["runuser", "-u", "nobody", "--"]
    };
    sonde(
        wrapper,
        &[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            &listen,
        ],
    )
    .expect_code(1)
    .stderr_mentions("CAP_BPF");
}

#[test]
fn check_reports_kernel_features() {
    if !require_root() {
        return;
    }
    let r = sonde(&[], &["check"]);
    r.no_panic();
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        matches!(r.code, Some(0) | Some(1)),
        "sonde check exited with {:?} (expected 0, or 1 when a hook is missing):\n{all}",
        r.code
    );
    for needle in ["BTF", "kprobes"] {
        assert!(
            all.contains(needle),
            "sonde check output does not mention {needle}:\n{all}"
        );
    }
}

#[test]
fn version_flag_prints_name_and_version() {
    if !require_root() {
        return;
    }
    let r = sonde(&[], &["--version"]);
    r.expect_code(0);
    assert!(
        r.stdout.starts_with("sonde ") && r.stdout.contains(env!("CARGO_PKG_VERSION")),
        "sonde --version printed {:?}, expected \"sonde {} ...\"",
        r.stdout,
        env!("CARGO_PKG_VERSION")
    );
}

/// `bpftool -j prog show` entries: (id, name).
fn bpf_programs() -> Vec<(u64, String)> {
    sys::need_tool("bpftool", "bpftool");
    let out = must(&mut cmd("bpftool", &["-j", "prog", "show"]));
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("bpftool -j prog show printed no JSON ({e}): {out}"));
    v.as_array()
        .unwrap_or_else(|| panic!("bpftool -j prog show: not an array: {out}"))
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or(0),
                p["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Ids of the BPF programs process `pid` holds, directly or through links,
/// from `/proc/PID/fdinfo` (`prog_id:` lines). bpftool's own per-program
/// pid listing needs a bpftool built with skeletons, which Debian's is not.
fn held_program_ids(pid: u32) -> BTreeSet<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for e in std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .flatten()
    {
        if let Ok(info) = std::fs::read_to_string(e.path()) {
            for line in info.lines() {
                if let Some(id) = line.strip_prefix("prog_id:")
                    && let Ok(id) = id.trim().parse()
                {
                    ids.insert(id);
                }
            }
        }
    }
    ids
}

/// Which of `ids` are still loaded, as "id name".
fn still_loaded(ids: &BTreeSet<u64>) -> Vec<String> {
    bpf_programs()
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(id, name)| format!("{id} {name}"))
        .collect()
}

fn pinned_sonde_paths() -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if e.file_name().to_string_lossy().contains("sonde") {
                    out.push(p.display().to_string());
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&p, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(std::path::Path::new("/sys/fs/bpf"), &mut out);
    out
}

#[test]
fn sigterm_detaches_everything_and_exits_zero() {
    if !require_root() {
        return;
    }
    // Native XDP (auto would take TC on this veth): the XDP detach is part
    // of what this test proves.
    let mut lab = Lab::start(Config::new().set("network", "xdp_mode", "\"native\""));
    let pid = lab.agent.pid();
    let held = held_program_ids(pid);
    let names: Vec<String> = bpf_programs()
        .into_iter()
        .filter(|(id, _)| held.contains(id))
        .map(|(_, name)| name)
        .collect();
    for want in ["sonde_xdp_ingress", "sonde_tc_egress", "sonde_sys_enter"] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "the running agent (pid {pid}) holds no program named {want}*; it holds {names:?} \
             (ids {held:?}): the leak check below would prove less"
        );
    }

    let (status, took) = lab
        .agent
        .terminate(Duration::from_secs(2))
        .unwrap_or_else(|| {
            panic!(
                "the agent did not exit within 2 s of SIGTERM; log:\n{}",
                lab.agent.log()
            )
        });
    assert!(
        status.success(),
        "the agent exited with {status} after SIGTERM; log:\n{}",
        lab.agent.log()
    );
    assert!(took <= Duration::from_secs(2), "exit took {took:?}");

    // Freed programs can take a moment to leave bpftool's list.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left = still_loaded(&held);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = still_loaded(&held);
    }
    assert!(
        left.is_empty(),
        "programs the agent held are still loaded 3 s after it exited: {left:?}"
    );
    let pinned = pinned_sonde_paths();
    assert!(pinned.is_empty(), "left in /sys/fs/bpf: {pinned:?}");

    let link = must(&mut cmd("ip", &["-d", "link", "show", "dev", LAB_IF]));
    assert!(
        !link.contains("prog/xdp") && !link.contains("xdpgeneric") && !link.contains(" xdp "),
        "an XDP program is still attached to {LAB_IF}:\n{link}"
    );
    for dir in ["ingress", "egress"] {
        let tc = must(&mut cmd("tc", &["filter", "show", "dev", LAB_IF, dir]));
        assert!(
            tc.trim().is_empty(),
            "a tc {dir} filter is still attached to {LAB_IF}:\n{tc}"
        );
    }
}

#[test]
fn sigint_exits_zero() {
    if !require_root() {
        return;
    }
    let mut agent = Agent::start(&Config::new().render(), &[]);
    agent.signal(libc::SIGINT);
    match agent.wait_exit(Duration::from_secs(2)) {
        Some(s) => assert!(
            s.success(),
            "the agent exited with {s} after SIGINT; log:\n{}",
            agent.log()
        ),
        None => panic!(
            "the agent did not exit within 2 s of SIGINT; log:\n{}",
            agent.log()
        ),
    }
}

/// `sonde config check` and `sonde config defaults` as an unprivileged user
/// (no capabilities, so no kernel access): the defaults are valid, every
/// error names its key and exits 2.
#[test]
fn config_check_and_defaults_need_no_root() {
    let dir = TempDir::new("cli-config");
    // As nobody when root can switch to it; as whoever runs the test otherwise.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let wrapper: &[&str] = if root && sys::have("setpriv") {
        &[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
    } else {
        &[]
    };
    let defaults = sonde(wrapper, &["config", "defaults"])
        .expect_code(0)
        .stdout
        .clone();
    assert!(
        defaults.contains("[syscalls]") && defaults.contains("log_format"),
        "sonde config defaults printed:\n{defaults}"
    );
    let path = dir.write("defaults.toml", &defaults);
    // Readable by nobody.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let valid = sonde(wrapper, &["config", "check", path.to_str().unwrap()]);
    valid.expect_code(0);
    assert!(valid.stdout.contains("valid"), "{}", valid.stdout);

    for (name, text, key) in [
        (
            "wrong-type.toml",
            "[network]\nmax_flows = \"many\"\n",
            "network.max_flows",
        ),
        (
            "unknown-key.toml",
            "[network]\ninterface = []\n",
            "interface",
        ),
        (
            "bad-value.toml",
            "[events]\nflow_ring_bytes = 1000\n",
            "events.flow_ring_bytes",
        ),
        ("bad-format.toml", "log_format = \"xml\"\n", "log_format"),
        ("not-toml.toml", "listen = [\n", "not-toml.toml"),
    ] {
        let p = dir.write(name, text);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        sonde(wrapper, &["config", "check", p.to_str().unwrap()])
            .expect_code(2)
            .stderr_mentions(key);
    }
    sonde(wrapper, &["config", "check", "/nonexistent/sonde.toml"])
        .expect_code(2)
        .stderr_mentions("/nonexistent/sonde.toml");

    // The environment is judged as `sonde run` would judge it, unless --no-env.
    let with_env = |extra: &[&str]| {
        let mut c = Command::new(sys::sonde_bin());
        sys::clear_sonde_env(&mut c);
        c.env("SONDE_LISTEN", "not-an-address")
            .args(["config", "check"])
            .args(extra)
            .arg(&path);
        let desc = format!("{c:?}");
        Ran::from(desc, run_with_timeout(&mut c, RUN_TIMEOUT))
    };
    with_env(&[]).expect_code(2).stderr_mentions("listen");
    with_env(&["--no-env"]).expect_code(0);
}

/// `log_format = "json"`: every line the running agent logs is one JSON
/// object with a timestamp, a level, a target and a message.
#[test]
fn json_log_format_writes_one_object_per_line() {
    if !require_root() {
        return;
    }
    let config = Config::new().set("", "log_format", "\"json\"");
    let mut agent = Agent::start(&config.render(), &[]);
    agent.terminate(Duration::from_secs(10));
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines to judge:\n{log}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}\nlog:\n{log}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "log line lacks {key:?}: {line}");
        }
    }
    println!("{} log lines, each one JSON object", lines.len());
}
