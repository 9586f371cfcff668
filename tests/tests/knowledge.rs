//! The MAPE-K knowledge file on the real agent, read as an attacker who can
//! write the state directory would use it: symlinks planted at the file and
//! at the fixed temp name the agent once used are never followed (the file
//! they point to is unchanged, the saved file is a 0600 regular file and
//! the directory keeps its mode); hostile values (a threshold scale of 0 or
//! 1e9, a baseline of 1e300, an absurd verdict count) are dropped with a
//! log line naming the field and its range, and /api/v1/anomalies and
//! /metrics show the kind back at scale 1; NaN, a 5 MiB file, a FIFO, a
//! foreign version, a hard link and a file of another owner are set aside
//! with their reason, and however many starts meet an unusable file, at
//! most three set-aside copies remain; a state directory others may write
//! is warned about.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt, symlink},
    path::{Path, PathBuf},
    time::Duration,
};

use sonde_tests::{Agent, Config, require_root, sys::TempDir};

const FILE: &str = "mapek-knowledge.json";
/// Set-aside copies the agent keeps (knowledge::KEEP_SET_ASIDE).
const KEEP: usize = 3;

fn config(state_dir: &Path) -> String {
    Config::new()
        .set(
            "mapek",
            "state_dir",
            &format!("{:?}", state_dir.display().to_string()),
        )
        .render()
}

/// Waits until the MAPE-K loop has run `n` cycles.
fn wait_cycles(agent: &Agent, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = agent.get_json("/api/v1/anomalies");
        if report["cycles"].as_u64() >= Some(n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the MAPE-K loop did not run {n} cycles in 20 s: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the agent on `state_dir`, stops it (which saves what it learned)
/// and returns its log.
fn start_and_stop(state_dir: &Path) -> String {
    let mut agent = Agent::start(&config(state_dir), &[]);
    // A few cycles, so the loop has observed something to save.
    wait_cycles(&agent, 3);
    let (status, _) = agent
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the agent did not stop; log:\n{}", agent.log()));
    assert!(status.success(), "exit {status}; log:\n{}", agent.log());
    agent.log()
}

/// The log without its colour codes (the agent colours its log lines
/// even into a file), so structured fields read `features=1`.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_aside(dir: &Path) -> Vec<PathBuf> {
    let mut copies: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(&format!("{FILE}.corrupt-")))
        .collect();
    copies.sort();
    copies
}

fn saved(dir: &Path) -> serde_json::Value {
    let path = dir.join(FILE);
    let meta = fs::symlink_metadata(&path).expect("the knowledge was saved");
    assert!(meta.is_file(), "{} is not a regular file", path.display());
    assert_eq!(mode(&path), 0o600, "{} mode", path.display());
    serde_json::from_slice(&fs::read(&path).unwrap()).expect("the saved file is JSON")
}

#[test]
fn planted_symlinks_are_never_followed_and_the_file_is_0600() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("knowledge-symlink");
    let outside = tmp.write("outside", "precious\n");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
    let dir = tmp.path().join("state");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    // At the file itself, and at the fixed temp name earlier versions wrote
    // through (the temp name is now random and created O_EXCL).
    symlink(&outside, dir.join(FILE)).unwrap();
    let old_tmp = dir.join(format!("{FILE}.tmp"));
    symlink(&outside, &old_tmp).unwrap();

    let log = start_and_stop(&dir);

    assert!(
        log.contains("is a symbolic link, which is never followed") && log.contains("moved to"),
        "the planted link was not refused with a reason:\n{log}"
    );
    assert_eq!(fs::read_to_string(&outside).unwrap(), "precious\n");
    assert_eq!(mode(&outside), 0o644, "the link's target was chmod-ed");
    let stored = saved(&dir);
    assert_eq!(stored["version"], 1, "{stored}");
    assert_eq!(mode(&dir), 0o755, "the state directory's mode changed");
    // The link was moved aside (not its target), the old temp name is
    // untouched.
    let copies = set_aside(&dir);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(fs::symlink_metadata(&copies[0]).unwrap().is_symlink());
    assert!(fs::symlink_metadata(&old_tmp).unwrap().is_symlink());

    // A second run saves over a link planted after the first: replaced.
    fs::remove_file(&copies[0]).unwrap();
    fs::remove_file(dir.join(FILE)).unwrap();
    symlink(&outside, dir.join(FILE)).unwrap();
    start_and_stop(&dir);
    assert_eq!(fs::read_to_string(&outside).unwrap(), "precious\n");
    saved(&dir);
    // No temp file is left behind.
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".mapek-knowledge.json."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn hostile_values_are_dropped_with_a_log_line_naming_field_and_range() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("knowledge-values");
    let dir = tmp.path().to_path_buf();
    tmp.write(
        FILE,
        r#"{
  "version": 1,
  "baselines": {
    "syscalls_per_second": {"mean": 1e300, "var": 0.0, "samples": 100},
    "syscall_error_share": {"mean": 0.01, "var": 0.0001, "samples": 100}
  },
  "threshold_scale": {"syscall_storm": 0.0, "port_scan": 1e9, "syn_flood": 2.0},
  "feedback": {
    "syn_flood": {"false_positive": 3, "confirmed": 1},
    "port_scan": {"false_positive": 99999999999, "confirmed": 0}
  }
}"#,
    );
    let mut agent = Agent::start(&config(&dir), &[]);
    let log = plain(&agent.log());
    for line in [
        "threshold_scale.syscall_storm = 0 is outside [0.5, 4]; dropped",
        "threshold_scale.port_scan = 1000000000 is outside [0.5, 4]; dropped",
        "baselines.syscalls_per_second.mean = 1e300 is outside [0, 1000000000]; dropped",
        "feedback.port_scan = 99999999999 false_positive, 0 confirmed is outside [0, 1000000000]",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    assert!(
        log.contains("baselines reloaded") && log.contains("features=1"),
        "the valid baseline was not kept alone:\n{log}"
    );
    // The scales in force: syn_flood's valid 2 kept, the others back at 1.
    let report = agent.get_json("/api/v1/anomalies");
    assert_eq!(
        report["threshold_scale"],
        serde_json::json!({"syn_flood": 2.0}),
        "{report}"
    );
    let scrape = agent.metrics();
    for (kind, scale) in [
        ("syscall_storm", 1.0),
        ("port_scan", 1.0),
        ("syn_flood", 2.0),
    ] {
        assert_eq!(
            scrape.value("sonde_mapek_threshold_scale", &[("kind", kind)]),
            Some(scale),
            "{kind}:\n{}",
            scrape.grep("sonde_mapek_threshold_scale")
        );
    }
    let verdicts = |kind| {
        scrape.value_or_zero(
            "sonde_mapek_feedback_total",
            &[("kind", kind), ("verdict", "false_positive")],
        )
    };
    assert_eq!((verdicts("syn_flood"), verdicts("port_scan")), (3.0, 0.0));
    wait_cycles(&agent, 3);
    let (status, _) = agent.terminate(Duration::from_secs(10)).expect("stopped");
    assert!(status.success(), "{}", agent.log());
    drop(agent);
    // What is saved again is what was kept, and the re-learned baseline.
    let stored = saved(&dir);
    assert_eq!(
        stored["threshold_scale"],
        serde_json::json!({"syn_flood": 2.0}),
        "{stored}"
    );
    let mean = stored["baselines"]["syscalls_per_second"]["mean"]
        .as_f64()
        .unwrap_or(f64::NAN);
    assert!(
        (0.0..1e9).contains(&mean),
        "re-learned mean {mean}: {stored}"
    );
    assert!(stored["feedback"].get("port_scan").is_none(), "{stored}");
}

/// Puts an unusable file at a path.
type Plant<'a> = dyn Fn(&Path) + 'a;

#[test]
fn unusable_files_are_set_aside_with_a_reason_and_at_most_three_kept() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("knowledge-aside");
    let dir = tmp.path().to_path_buf();
    // Valid JSON padded to 5 MiB: refused for its size alone.
    let mut big = r#"{"version": 1, "baselines": {}}"#.to_owned();
    big.push_str(&" ".repeat(5 << 20));
    let cases: [(&str, &Plant, &str); 7] = [
        (
            "NaN",
            &|p| {
                fs::write(
                    p,
                    r#"{"version": 1, "baselines": {"syscalls_per_second": {"mean": NaN, "var": 0, "samples": 1}}}"#,
                )
                .unwrap()
            },
            "expected value",
        ),
        (
            "5 MiB",
            &|p| fs::write(p, &big).unwrap(),
            "over the 1048576-byte limit",
        ),
        (
            "a FIFO",
            &|p| {
                let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            },
            "not a regular file",
        ),
        (
            "a foreign version",
            &|p| fs::write(p, r#"{"version": 99, "baselines": {}}"#).unwrap(),
            "version 99 (expected 1)",
        ),
        (
            "garbage",
            &|p| fs::write(p, "{garbage").unwrap(),
            "key must be a string",
        ),
        (
            "a hard link",
            &|p| {
                fs::write(p, r#"{"version": 1, "baselines": {}}"#).unwrap();
                fs::hard_link(p, p.with_extension("elsewhere")).unwrap();
            },
            "it has 2 hard links",
        ),
        (
            "another owner",
            &|p| {
                fs::write(p, r#"{"version": 1, "baselines": {}}"#).unwrap();
                std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
            },
            "owned by uid 65534, not the agent's uid 0",
        ),
    ];
    // A state directory others may write is named at start.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    for (i, (what, plant, reason)) in cases.iter().enumerate() {
        let path = dir.join(FILE);
        let _ = fs::remove_file(&path);
        plant(&path);
        let log = start_and_stop(&dir);
        if i == 0 {
            assert!(
                log.contains("is writable by others (owner uid 0, mode 0777)"),
                "no warning about the directory:\n{log}"
            );
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            assert!(!log.contains("writable by others"), "{log}");
        }
        assert!(
            log.contains("is unusable") && log.contains(reason),
            "{what}: no warning with {reason:?}:\n{log}"
        );
        let copies = set_aside(&dir);
        assert_eq!(copies.len(), (i + 1).min(KEEP), "{what}: {copies:?}");
        if i >= KEEP {
            assert!(
                log.contains("removed the 1 oldest set-aside copies")
                    && log.contains(&format!("at most {KEEP} are kept")),
                "{what}: the pruning is not logged:\n{log}"
            );
        }
        // Every start leaves a fresh, usable file.
        saved(&dir);
    }
    // The newest three are the ones kept: the garbage, the hard link, the
    // file of another owner.
    let copies = set_aside(&dir);
    assert_eq!(fs::read_to_string(&copies[0]).unwrap(), "{garbage");
    assert_eq!(fs::metadata(&copies[1]).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(&copies[2]).unwrap().uid(), 65534);
}
