//! Reading what the guest reported (the `SONDE-VM:` lines init.sh prints on
//! the console) and `sonde check` output, and judging it: one row per
//! profile and check, pass, fail or not applicable, with the numbers.

use std::{collections::BTreeMap, time::Duration};

use super::guest::{self, Profile};

const MARKER: &str = "SONDE-VM: ";

/// One step's report (`setup`, `check:PROFILE`, `test:PROFILE:BINARY`).
#[derive(Debug, Default)]
pub struct Step {
    pub out: Vec<String>,
    pub err: Vec<String>,
    pub exit: Option<i32>,
    pub errors: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Console {
    pub kernel: Option<String>,
    pub steps: BTreeMap<String, Step>,
    pub done: bool,
}

/// Reads the report lines out of the console (kernel messages and anything
/// else are ignored; a line garbled by an interleaved kernel message is
/// skipped as a whole).
pub fn parse_console(text: &str) -> Console {
    let mut c = Console::default();
    for line in text.lines() {
        let Some(at) = line.find(MARKER) else {
            continue;
        };
        let rest = &line[at + MARKER.len()..];
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "kernel" => c.kernel = Some(rest.trim().to_owned()),
            "done" => c.done = true,
            "out" | "err" | "exit" | "error" => {
                let (step, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                let s = c.steps.entry(step.to_owned()).or_default();
                match kind {
                    "out" => s.out.push(rest.to_owned()),
                    "err" => s.err.push(rest.to_owned()),
                    "exit" => s.exit = rest.trim().parse().ok(),
                    _ => s.errors.push(rest.to_owned()),
                }
            }
            _ => {}
        }
    }
    c
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program: String,
    pub hook: String,
    pub mode: String,
}

/// `sonde check`'s report: capability lines (`kprobes  yes`),
/// `attached  PROGRAM: HOOK (MODE), HOOK (MODE)` lines and
/// `unavailable  PROGRAM HOOK: REASON` lines (optional programs or signals
/// this kernel could not take; the check still exits 0, degraded).
#[derive(Debug, Default)]
pub struct CheckOutput {
    pub capabilities: Vec<(String, String)>,
    pub attachments: Vec<Attachment>,
    pub unavailable: Vec<String>,
    /// `partial` lines: "PROGRAM HOOK: what it cannot see on this kernel".
    pub partial: Vec<String>,
    pub exit: Option<i32>,
    pub stderr: Vec<String>,
}

impl CheckOutput {
    pub fn parse(stdout: &[String], stderr: &[String], exit: Option<i32>) -> CheckOutput {
        let mut out = CheckOutput {
            exit,
            stderr: stderr.to_vec(),
            ..CheckOutput::default()
        };
        for line in stdout {
            // Key and value are separated by a run of spaces.
            let Some(gap) = line.find("  ") else {
                continue;
            };
            let key = line[..gap].trim();
            let value = line[gap..].trim();
            if key == "attached" {
                let Some((program, hooks)) = value.split_once(": ") else {
                    continue;
                };
                for h in hooks.split(", ") {
                    let (hook, mode) = match h.rsplit_once(" (") {
                        Some((hook, mode)) => (hook, mode.trim_end_matches(')')),
                        None => (h, ""),
                    };
                    out.attachments.push(Attachment {
                        program: program.to_owned(),
                        hook: hook.to_owned(),
                        mode: mode.to_owned(),
                    });
                }
            } else if key == "unavailable" {
                out.unavailable.push(value.to_owned());
            } else if key == "partial" {
                out.partial.push(value.to_owned());
            } else if key != "result" && !key.is_empty() {
                out.capabilities.push((key.to_owned(), value.to_owned()));
            }
        }
        out
    }

    pub fn capability(&self, key: &str) -> Option<&str> {
        self.capabilities
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The error line to show for a failed check: the last one naming an
    /// error, else the last stderr line.
    fn error_summary(&self) -> String {
        self.stderr
            .iter()
            .rev()
            .find(|l| l.contains("error"))
            .or(self.stderr.last())
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|| "no message".to_owned())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// The kernel lacks what the profile forces; refusing is right.
    NotApplicable,
    /// Not run here (on the host: the integration tests cover it).
    NotRun,
}

#[derive(Debug)]
pub struct Row {
    pub profile: &'static str,
    /// `sonde check`, `preferred tier`, or a test (`BINARY::TEST`).
    pub what: String,
    pub status: Status,
    /// For table cells, after the status word: the measured rise, `degraded`.
    pub short: Option<String>,
    pub detail: String,
}

pub const CHECK: &str = "sonde check";
pub const PREFERRED: &str = "preferred tier";

/// Everything known about one kernel after its run.
#[derive(Debug)]
pub struct KernelRun {
    pub release: String,
    /// True for the host's own kernel (only `sonde check`).
    pub host: bool,
    /// Boot to power-off, for VMs.
    pub elapsed: Option<Duration>,
    pub checks: BTreeMap<&'static str, CheckOutput>,
    pub rows: Vec<Row>,
    /// Failures outside any check: setup errors, a guest that never finished.
    pub problems: Vec<String>,
}

impl KernelRun {
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.rows.iter().all(|r| r.status != Status::Fail)
    }

    pub fn failures(&self) -> impl Iterator<Item = String> + '_ {
        self.problems.iter().cloned().chain(
            self.rows
                .iter()
                .filter(|r| r.status == Status::Fail)
                .map(|r| format!("{} / {}: {}", r.profile, r.what, r.detail)),
        )
    }

    /// The capabilities `sonde check` reported with the default profile.
    pub fn capability(&self, key: &str) -> Option<&str> {
        self.checks.get("auto").and_then(|c| c.capability(key))
    }
}

/// Judges a guest's console for the given profiles.
pub fn judge_vm(
    release: &str,
    console: &Console,
    profiles: &[&'static Profile],
    elapsed: Duration,
) -> KernelRun {
    let mut run = KernelRun {
        release: release.to_owned(),
        host: false,
        elapsed: Some(elapsed),
        checks: BTreeMap::new(),
        rows: Vec::new(),
        problems: Vec::new(),
    };
    match &console.kernel {
        Some(k) if k != release => run
            .problems
            .push(format!("the guest runs {k}, not {release}")),
        Some(_) => {}
        None => run
            .problems
            .push("the guest never reported (no `SONDE-VM: kernel` line): did it boot?".into()),
    }
    if let Some(setup) = console.steps.get("setup") {
        run.problems
            .extend(setup.errors.iter().map(|e| format!("setup: {e}")));
    }
    if !console.done && console.kernel.is_some() {
        run.problems
            .push("the guest did not finish (timeout or kernel panic): see the console log".into());
    }
    let empty = Step::default();
    for &p in profiles {
        let step = console
            .steps
            .get(&format!("check:{}", p.name))
            .unwrap_or(&empty);
        run.checks
            .insert(p.name, CheckOutput::parse(&step.out, &step.err, step.exit));
    }
    let auto_caps = run.checks.get("auto").map(|c| c.capabilities.clone());
    for &p in profiles {
        let check = &run.checks[p.name];
        let caps = auto_caps.as_deref().unwrap_or(&check.capabilities);
        let status = push_check_rows(&mut run.rows, p, check, caps);
        for entry in p.tests {
            let step = console
                .steps
                .get(&format!("test:{}:{entry}", p.name))
                .unwrap_or(&empty);
            run.rows.extend(judge_tests(p, entry, step, status));
        }
    }
    run
}

/// libtest's report of one test binary (`--show-output`): each test's
/// result line and its captured output.
#[derive(Debug, Default)]
pub struct TestReport {
    /// (test name, `ok` | `FAILED` | `ignored`), in the order they ran.
    pub results: Vec<(String, String)>,
    /// Test name → the lines it printed.
    pub output: BTreeMap<String, Vec<String>>,
}

impl TestReport {
    pub fn parse(lines: &[String]) -> TestReport {
        let mut r = TestReport::default();
        let mut current: Option<String> = None;
        for line in lines.iter().map(|l| l.trim_end()) {
            if let Some((name, result)) = line
                .strip_prefix("test ")
                .and_then(|rest| rest.rsplit_once(" ... "))
            {
                r.results.push((name.to_owned(), result.trim().to_owned()));
                current = None;
            } else if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|l| l.strip_suffix(" stdout ----"))
            {
                current = Some(name.to_owned());
            } else if matches!(line, "successes:" | "failures:") {
                current = None;
            } else if let Some(name) = &current {
                r.output
                    .entry(name.clone())
                    .or_default()
                    .push(line.to_owned());
            }
        }
        r
    }

    /// What the test printed after `measured: `, joined.
    fn measured(&self, name: &str) -> Option<String> {
        let m: Vec<&str> = self
            .output
            .get(name)?
            .iter()
            .filter_map(|l| l.strip_prefix("measured: "))
            .collect();
        (!m.is_empty()).then(|| m.join(", "))
    }

    /// The panic message of a failed test, on one line.
    fn panic_message(&self, name: &str) -> String {
        let Some(lines) = self.output.get(name) else {
            return "no output".to_owned();
        };
        let at = lines.iter().position(|l| l.contains("panicked at"));
        let from = at.map_or(0, |i| i + 1);
        let message: Vec<&str> = lines[from..]
            .iter()
            .map(|l| l.as_str())
            .take_while(|l| !l.is_empty() && !l.starts_with("note: "))
            .take(6)
            .collect();
        let at = at.map(|i| lines[i].trim()).unwrap_or_default();
        format!("{at} {}", message.join(" ")).trim().to_owned()
    }
}

/// One test entry's run in the guest (`BINARY` or `BINARY::TEST`): a row
/// per test (`BINARY::TEST`), and a row for the entry when it failed
/// without a failing test (killed at the timeout, crashed) or never ran.
fn judge_tests(p: &Profile, entry: &str, step: &Step, check_status: Status) -> Vec<Row> {
    let binary = guest::test_binary(entry);
    let row = |what: String, status, short, detail| Row {
        profile: p.name,
        what,
        status,
        short,
        detail,
    };
    let Some(exit) = step.exit else {
        let (status, detail) = match check_status {
            Status::Pass => (Status::Fail, "not reached".to_owned()),
            Status::NotApplicable => (
                Status::NotApplicable,
                "skipped: `sonde check` did not pass".to_owned(),
            ),
            _ => (
                Status::NotRun,
                "skipped: `sonde check` did not pass".to_owned(),
            ),
        };
        return vec![row(entry.to_owned(), status, None, detail)];
    };
    let report = TestReport::parse(&step.out);
    let mut rows: Vec<Row> = report
        .results
        .iter()
        .map(|(name, result)| {
            let what = format!("{binary}::{name}");
            let measured = report.measured(name);
            match result.as_str() {
                "ok" => row(
                    what,
                    Status::Pass,
                    measured.clone(),
                    measured.unwrap_or_else(|| "ok".into()),
                ),
                "ignored" => row(what, Status::NotRun, None, "ignored".into()),
                _ => row(what, Status::Fail, None, report.panic_message(name)),
            }
        })
        .collect();
    let failed = rows.iter().any(|r| r.status == Status::Fail);
    if rows.is_empty() || (exit != 0 && !failed) {
        let last: Vec<&str> = step.out.iter().rev().take(5).map(|l| l.trim()).collect();
        let last: Vec<&str> = last.into_iter().rev().collect();
        rows.push(row(
            entry.to_owned(),
            Status::Fail,
            None,
            format!(
                "exit {exit}{} after {} test result(s); last lines: {}",
                if exit == 137 {
                    " (killed at the timeout)"
                } else {
                    ""
                },
                report.results.len(),
                last.join(" | ")
            ),
        ));
    }
    rows
}

/// The `sonde check` row of a profile (and, for `auto`, whether the
/// preferred tier was chosen); returns the check's status.
fn push_check_rows(
    rows: &mut Vec<Row>,
    p: &'static Profile,
    check: &CheckOutput,
    caps: &[(String, String)],
) -> Status {
    let (status, short, detail) = judge_check(p, check, caps);
    rows.push(Row {
        profile: p.name,
        what: CHECK.to_owned(),
        status,
        short,
        detail,
    });
    if p.name == "auto" {
        rows.push(judge_preferred(p, check, caps, status == Status::Pass));
    }
    status
}

/// The host's own kernel: `sonde check` per profile (the integration tests
/// of `cargo xtask test` run here on their own).
pub fn judge_host(release: &str, checks: Vec<(&'static Profile, CheckOutput)>) -> KernelRun {
    let mut run = KernelRun {
        release: release.to_owned(),
        host: true,
        elapsed: None,
        checks: BTreeMap::new(),
        rows: Vec::new(),
        problems: Vec::new(),
    };
    let auto_caps = checks
        .iter()
        .find(|(p, _)| p.name == "auto")
        .map(|(_, c)| c.capabilities.clone());
    for (p, check) in checks {
        let caps = auto_caps
            .clone()
            .unwrap_or_else(|| check.capabilities.clone());
        push_check_rows(&mut run.rows, p, &check, &caps);
        run.checks.insert(p.name, check);
    }
    run
}

fn judge_check(
    p: &Profile,
    check: &CheckOutput,
    caps: &[(String, String)],
) -> (Status, Option<String>, String) {
    let lacks = p
        .needs
        .filter(|need| caps.iter().any(|(k, v)| k == need && v == "no"));
    let unavailable = if check.unavailable.is_empty() {
        String::new()
    } else {
        format!("; unavailable: {}", check.unavailable.join("; "))
    };
    let degraded = (!check.unavailable.is_empty()).then(|| "degraded".to_owned());
    if let (Some(need), Some(code)) = (lacks, check.exit) {
        // Refusing (exit 1) or going without the signal (exit 0, degraded)
        // are both right; attaching the forced tier anyway would be odd.
        let what = if code == 0 {
            format!("went without it (exit 0){unavailable}")
        } else {
            format!("refused (exit {code}): {}", check.error_summary())
        };
        return (
            Status::NotApplicable,
            None,
            format!("kernel has no {need}; {what}"),
        );
    }
    match check.exit {
        None => (Status::Fail, None, "not reached".into()),
        Some(code) if code != 0 => (
            Status::Fail,
            None,
            format!("exit {code}: {}", check.error_summary()),
        ),
        Some(_) => {
            let n = check.attachments.len();
            let Some(e) = p.expect else {
                return (
                    Status::Pass,
                    degraded,
                    format!("{n} attachments{unavailable}"),
                );
            };
            let found = check
                .attachments
                .iter()
                .filter(|a| a.hook.contains(e.hook) && e.mode.is_none_or(|m| a.mode == m))
                .map(|a| format!("{} ({})", a.hook, a.mode))
                .collect::<Vec<_>>();
            if found.is_empty() {
                let want = match e.mode {
                    Some(m) => format!("a hook matching {:?} in mode {m}", e.hook),
                    None => format!("a hook matching {:?}", e.hook),
                };
                (
                    Status::Fail,
                    None,
                    format!("exit 0 but no attachment with {want}{unavailable}"),
                )
            } else {
                (
                    Status::Pass,
                    degraded,
                    format!("{n} attachments; {}{unavailable}", found.join(", ")),
                )
            }
        }
    }
}

/// With the defaults, the cheapest tier the kernel offers must be taken:
/// fentry where BPF trampolines work, else kprobes, else tracepoints.
fn judge_preferred(
    p: &Profile,
    check: &CheckOutput,
    caps: &[(String, String)],
    check_ok: bool,
) -> Row {
    let has = |key: &str| caps.iter().any(|(k, v)| k == key && v == "yes");
    let row = |status, short: Option<String>, detail: String| Row {
        profile: p.name,
        what: PREFERRED.to_owned(),
        status,
        short,
        detail,
    };
    if !check_ok {
        return row(Status::NotRun, None, "`sonde check` did not pass".into());
    }
    let (cap, mode) = if has("fentry/fexit") {
        ("fentry/fexit", "fentry")
    } else if has("kprobes") {
        ("kprobes", "kprobe")
    } else {
        return row(
            Status::Pass,
            Some("tracepoints".into()),
            "no fentry and no kprobes on this kernel: tracepoint tiers only".into(),
        );
    };
    let programs: Vec<&str> = check
        .attachments
        .iter()
        .filter(|a| a.mode == mode)
        .map(|a| a.program.as_str())
        .collect();
    if programs.is_empty() {
        let modes: std::collections::BTreeSet<&str> =
            check.attachments.iter().map(|a| a.mode.as_str()).collect();
        row(
            Status::Fail,
            None,
            format!(
                "the kernel has {cap} but no program attached in mode {mode} (modes used: {})",
                modes.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        row(
            Status::Pass,
            Some(mode.to_owned()),
            format!("{mode}: {}", programs.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK_OUT: &str = "\
kernel            6.12.117+deb12-cloud-amd64
BTF               yes
kprobes           no
fentry/fexit      yes
bpffs mounted     yes (not needed: Sonde pins nothing)
privileges        ok
attached          sonde_sys_enter_raw: raw_tracepoint:sys_enter (raw_tracepoint)
attached          sonde_tc_egress: tc_egress:lo (tcx), tc_egress:eth0 (netlink)
attached          sonde_tcp_state_fentry: fentry:tcp_set_state (fentry)
unavailable       block none: tracepoint: TP_BLK_DONE_DEV could not be resolved
result            ok (degraded): 1 optional program(s) unavailable";

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn parses_check_output() {
        let c = CheckOutput::parse(&lines(CHECK_OUT), &[], Some(0));
        assert_eq!(c.capability("kprobes"), Some("no"));
        assert_eq!(c.capability("fentry/fexit"), Some("yes"));
        assert_eq!(
            c.capability("bpffs mounted"),
            Some("yes (not needed: Sonde pins nothing)")
        );
        assert_eq!(c.attachments.len(), 4);
        assert_eq!(
            c.unavailable,
            ["block none: tracepoint: TP_BLK_DONE_DEV could not be resolved"]
        );
        assert_eq!(c.capability("result"), None);
        assert_eq!(
            c.attachments[2],
            Attachment {
                program: "sonde_tc_egress".into(),
                hook: "tc_egress:eth0".into(),
                mode: "netlink".into()
            }
        );
    }

    fn console(profiles: &[&Profile], good: bool) -> String {
        let mut s = String::from("[    0.1] noise\nSONDE-VM: kernel 6.1.0-1-cloud-amd64\n");
        for p in profiles {
            for l in CHECK_OUT.lines() {
                s.push_str(&format!("SONDE-VM: out check:{} {l}\n", p.name));
            }
            s.push_str(&format!("SONDE-VM: exit check:{} 0\n", p.name));
            for t in p.tests {
                let step = format!("test:{}:{t}", p.name);
                let (result, exit) = if good { ("ok", 0) } else { ("FAILED", 101) };
                for l in [
                    "running 1 test".to_owned(),
                    format!("test counts_exactly ... {result}"),
                    String::new(),
                    if good { "successes:" } else { "failures:" }.to_owned(),
                    String::new(),
                    "---- counts_exactly stdout ----".to_owned(),
                    "measured: +7 of 7".to_owned(),
                    "thread 'counts_exactly' panicked at tests/tests/x.rs:1:1:".to_owned(),
                    "rose by 6 for 7".to_owned(),
                    String::new(),
                ] {
                    s.push_str(&format!("SONDE-VM: out {step} {l}\n"));
                }
                s.push_str(&format!("SONDE-VM: exit {step} {exit}\n"));
            }
        }
        s.push_str("SONDE-VM: done\n");
        s
    }

    #[test]
    fn a_good_console_passes_and_a_failing_test_fails() {
        let profiles = [
            guest::profile("auto").unwrap(),
            guest::profile("syscalls-raw_tracepoint").unwrap(),
        ];
        let c = parse_console(&console(&profiles, true));
        let run = judge_vm("6.1.0-1-cloud-amd64", &c, &profiles, Duration::from_secs(5));
        assert!(run.passed(), "{:?}", run.failures().collect::<Vec<_>>());
        // An unavailable optional program: passes, marked degraded.
        assert_eq!(run.rows[0].short.as_deref(), Some("degraded"));
        // auto: check, preferred tier, a row per test entry; raw_tracepoint: check
        let auto = guest::profile("auto").unwrap();
        assert_eq!(run.rows.len(), 2 + auto.tests.len() + 1);
        let test = run.rows.iter().find(|r| r.what.contains("::")).unwrap();
        assert_eq!(test.what, "syscalls::counts_exactly");
        assert_eq!(test.short.as_deref(), Some("+7 of 7"));

        let c = parse_console(&console(&profiles, false));
        let run = judge_vm("6.1.0-1-cloud-amd64", &c, &profiles, Duration::from_secs(5));
        let failures: Vec<String> = run.failures().collect();
        assert_eq!(failures.len(), auto.tests.len(), "{failures:?}");
        assert!(
            failures
                .iter()
                .any(|f| f.contains("panicked at") && f.contains("rose by 6")),
            "{failures:?}"
        );
    }

    #[test]
    fn a_test_binary_killed_without_a_failing_test_fails() {
        let p = guest::profile("auto").unwrap();
        let step = Step {
            out: lines("running 3 tests\ntest a ... ok"),
            exit: Some(137),
            ..Step::default()
        };
        let rows = judge_tests(p, "syscalls", &step, Status::Pass);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].status, Status::Pass);
        assert_eq!(rows[1].status, Status::Fail);
        assert!(rows[1].detail.contains("timeout"), "{}", rows[1].detail);
        // Not reached after a refused check: not applicable, not a failure.
        let rows = judge_tests(p, "syscalls", &Step::default(), Status::NotApplicable);
        assert_eq!(rows[0].status, Status::NotApplicable);
    }

    #[test]
    fn the_cheapest_tier_on_offer_must_be_taken() {
        let auto = guest::profile("auto").unwrap();
        let with_fentry = CheckOutput::parse(&lines(CHECK_OUT), &[], Some(0));
        let caps = with_fentry.capabilities.clone();
        let row = judge_preferred(auto, &with_fentry, &caps, true);
        assert_eq!(row.status, Status::Pass, "{}", row.detail);
        // The same kernel, but the TCP programs fell back to tracepoints.
        let text = CHECK_OUT.replace(
            "sonde_tcp_state_fentry: fentry:tcp_set_state (fentry)",
            "sonde_tcp_state: tracepoint:sock:inet_sock_set_state (tracepoint)",
        );
        let without = CheckOutput::parse(&lines(&text), &[], Some(0));
        let row = judge_preferred(auto, &without, &caps, true);
        assert_eq!(row.status, Status::Fail, "{}", row.detail);
    }

    #[test]
    fn an_unfinished_guest_fails() {
        let profiles = [guest::profile("auto").unwrap()];
        let text = console(&profiles, true).replace("SONDE-VM: done\n", "");
        let run = judge_vm(
            "6.1.0-1-cloud-amd64",
            &parse_console(&text),
            &profiles,
            Duration::ZERO,
        );
        assert!(!run.passed());
        let run = judge_vm(
            "6.1.0-1-cloud-amd64",
            &parse_console(""),
            &profiles,
            Duration::ZERO,
        );
        assert!(run.failures().any(|f| f.contains("never reported")));
    }

    #[test]
    fn a_forced_tier_the_kernel_lacks_is_not_applicable() {
        let kprobe = guest::profile("tcp-kprobe").unwrap();
        let auto = guest::profile("auto").unwrap();
        let caps = CheckOutput::parse(&lines(CHECK_OUT), &[], Some(0));
        let refused = CheckOutput::parse(&[], &lines("sonde: error: tcp: no kprobes"), Some(1));
        let run = judge_host("6.18", vec![(auto, caps), (kprobe, refused)]);
        let row = run
            .rows
            .iter()
            .find(|r| r.profile == "tcp-kprobe" && r.what == CHECK)
            .unwrap();
        assert_eq!(row.status, Status::NotApplicable, "{}", row.detail);
        assert!(run.passed());
        // Going without the signal (exit 0, degraded) is as right as refusing.
        let degraded = CheckOutput::parse(
            &lines("unavailable       tcp none: no kprobes"),
            &[],
            Some(0),
        );
        let caps = CheckOutput::parse(&lines(CHECK_OUT), &[], Some(0));
        let run = judge_host("6.18", vec![(auto, caps), (kprobe, degraded)]);
        assert!(run.rows.iter().all(|r| r.status != Status::Fail));
    }

    #[test]
    fn a_forced_tier_must_show_in_the_attachments() {
        let tp = guest::profile("syscalls-tracepoint").unwrap();
        // CHECK_OUT shows raw tracepoints only.
        let check = CheckOutput::parse(&lines(CHECK_OUT), &[], Some(0));
        let (status, _, detail) = judge_check(tp, &check, &check.capabilities);
        assert_eq!(status, Status::Fail, "{detail}");
    }
}
