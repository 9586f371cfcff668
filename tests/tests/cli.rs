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
