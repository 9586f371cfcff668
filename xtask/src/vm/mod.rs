//! `cargo xtask vm-test [KERNEL…]`: the kernel matrix. Boots stock Debian
//! kernels under qemu (software emulation) from an initramfs around the
//! static agent and integration-test binaries, runs `sonde check` and the
//! profile's integration tests (with its settings forced) per profile
//! inside, judges what the guest reports, adds a `sonde check`
//! row for the host's own kernel, and regenerates docs/kernels.md.
//!
//! - `kernels`: which kernels, download and unpack (cached under target/vm/)
//! - `payload`: the static binaries (`cargo test --no-run` for the tests)
//! - `guest` (+ `init.sh`): the profiles, the tests the guest leaves out,
//!   and the guest's root file system
//! - `initramfs`: the cpio writer
//! - `qemu`: booting, with a deadline
//! - `results`: parsing and judging
//! - `report`: docs/kernels.md and the summary table

mod guest;
mod initramfs;
mod kernels;
mod payload;
mod qemu;
mod report;
mod results;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util;
use guest::Profile;
use results::{CheckOutput, KernelRun};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Kernel releases to boot, e.g. 6.1.0-56-cloud-amd64 (Debian package
    /// linux-image-RELEASE). Default: the newest Debian 6.1 and 6.12 cloud
    /// kernels that apt knows.
    #[arg(value_name = "KERNEL")]
    kernels: Vec<String>,
    /// Run only this profile (repeatable; `auto` is always run). Default: all.
    #[arg(long = "profile", value_name = "NAME")]
    profiles: Vec<String>,
    /// Seconds one VM may run before it is killed.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// VMs booted at once (each takes one host core: single-threaded TCG).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Copy the guests' whole serial console to stdout.
    #[arg(long)]
    console: bool,
    /// Do not rewrite docs/kernels.md.
    #[arg(long)]
    no_docs: bool,
    /// Leave out the row for this machine's own kernel (`sonde check` here, as root).
    #[arg(long)]
    no_host: bool,
}

impl Options {
    /// What `cargo xtask test` runs: the default kernels and every profile,
    /// leaving docs/kernels.md and the host row (the integration tests cover
    /// this machine's kernel) alone.
    pub fn for_test() -> Self {
        Self {
            kernels: Vec::new(),
            profiles: Vec::new(),
            timeout: 600,
            memory: 1024,
            cpus: 2,
            jobs: 2,
            console: false,
            no_docs: true,
            no_host: true,
        }
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let start = Instant::now();
    qemu::check_installed()?;
    let profiles = select_profiles(&opts.profiles)?;

    util::header("kernels");
    let releases = if opts.kernels.is_empty() {
        let r = kernels::default_releases()?;
        println!(
            "newest of series {}: {}",
            kernels::DEFAULT_SERIES.join(", "),
            r.join(", ")
        );
        r
    } else {
        opts.kernels.clone()
    };

    util::header("static payload (musl)");
    let payload = payload::build()?;
    let cache = util::target_dir().join("vm");

    util::header("kernel packages");
    let prepared: Vec<(String, anyhow::Result<kernels::Kernel>)> = releases
        .iter()
        .map(|r| (r.clone(), kernels::prepare(r, &cache)))
        .collect();

    let jobs = opts.jobs.max(1);
    util::header(&format!("VMs ({jobs} at a time)"));
    let mut runs = Vec::new();
    let mut queue = prepared.into_iter().peekable();
    while queue.peek().is_some() {
        let batch: Vec<_> = queue.by_ref().take(jobs).collect();
        let done: Vec<KernelRun> = thread::scope(|s| {
            let handles: Vec<_> = batch
                .into_iter()
                .map(|(release, kernel)| {
                    let (cache, payload, profiles, opts) = (&cache, &payload, &profiles, &opts);
                    let name = release.clone();
                    let handle = s.spawn(move || {
                        kernel
                            .and_then(|k| boot_and_judge(&k, cache, payload, profiles, opts))
                            .unwrap_or_else(|e| failed_run(&name, format!("{e:#}")))
                    });
                    (release, handle)
                })
                .collect();
            handles
                .into_iter()
                .map(|(release, h)| {
                    h.join()
                        .unwrap_or_else(|_| failed_run(&release, "the VM's thread panicked".into()))
                })
                .collect()
        });
        for run in done {
            print_verdict(&run);
            runs.push(run);
        }
    }

    if !opts.no_host {
        util::header("host kernel: sonde check");
        match host_checks(&payload.sonde, &cache, &profiles) {
            Ok(run) => {
                print_verdict(&run);
                runs.push(run);
            }
            Err(e) => println!("host row left out: {e:#}"),
        }
    }

    let total = start.elapsed();
    util::header("summary");
    print!("{}", report::summary(&runs));
    println!("\nfull run: {}", util::human(total));
    if !opts.no_docs {
        let info = report::RunInfo {
            total,
            revision: revision(),
        };
        let doc = util::workspace_root().join("docs").join("kernels.md");
        fs::create_dir_all(doc.parent().context("docs path")?)?;
        fs::write(&doc, report::markdown(&runs, &profiles, &info))
            .with_context(|| format!("writing {}", doc.display()))?;
        println!("wrote {}", doc.display());
    }

    let failed: Vec<&KernelRun> = runs.iter().filter(|k| !k.passed()).collect();
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|k| k.release.as_str()).collect();
        bail!(
            "vm-test: {} of {} kernels failed: {} (console logs in {})",
            failed.len(),
            runs.len(),
            names.join(", "),
            cache.join("logs").display()
        );
    }
    println!("vm-test: all {} kernels passed", runs.len());
    Ok(())
}

fn select_profiles(names: &[String]) -> anyhow::Result<Vec<&'static Profile>> {
    if names.is_empty() {
        return Ok(guest::PROFILES.iter().collect());
    }
    for n in names {
        if guest::profile(n).is_none() {
            let known: Vec<&str> = guest::PROFILES.iter().map(|p| p.name).collect();
            bail!("unknown profile {n:?}; known: {}", known.join(", "));
        }
    }
    // `auto` always: its check is the kernel's capability and hook table.
    Ok(guest::PROFILES
        .iter()
        .filter(|p| p.name == "auto" || names.iter().any(|n| n == p.name))
        .collect())
}

fn failed_run(release: &str, problem: String) -> KernelRun {
    KernelRun {
        release: release.to_owned(),
        host: false,
        elapsed: None,
        checks: Default::default(),
        rows: Vec::new(),
        problems: vec![problem],
    }
}

/// Boots one kernel and judges its report. Progress lines carry the
/// kernel's short name: several VMs may run at once.
fn boot_and_judge(
    kernel: &kernels::Kernel,
    cache: &Path,
    payload: &payload::Payload,
    profiles: &[&'static Profile],
    opts: &Options,
) -> anyhow::Result<KernelRun> {
    let release = kernel.release.as_str();
    let tag = report::short_name(release);
    let names: Vec<String> = kernel
        .modules
        .iter()
        .filter_map(|m| Some(m.file_name()?.to_string_lossy().into_owned()))
        .collect();
    println!("[{tag}] modules: {}", names.join(" "));

    let run_dir = cache.join("run");
    let logs = cache.join("logs");
    fs::create_dir_all(&run_dir)?;
    fs::create_dir_all(&logs)?;
    let initramfs = Scratch(run_dir.join(format!("initramfs-{release}.cpio")));
    guest::build_initramfs(payload, kernel, profiles, &initramfs.0)?;

    let log = logs.join(format!("{release}.log"));
    let machine = qemu::Machine {
        vmlinuz: &kernel.vmlinuz,
        initramfs: &initramfs.0,
        memory_mib: opts.memory,
        cpus: opts.cpus,
        timeout: Duration::from_secs(opts.timeout),
        log: &log,
    };
    let boot = qemu::boot(&machine, |at, line| progress(&tag, at, line, opts.console))?;
    println!(
        "[{tag}] boot to power-off {}{}; console in {}",
        util::human(boot.elapsed),
        if boot.timed_out {
            format!(" (killed at the {} s timeout)", opts.timeout)
        } else {
            String::new()
        },
        log.display()
    );
    let console = results::parse_console(&boot.console);
    let mut run = results::judge_vm(release, &console, profiles, boot.elapsed);
    if boot.timed_out {
        run.problems.insert(
            0,
            format!("timed out after {} s (raise --timeout?)", opts.timeout),
        );
    }
    if !run.passed() {
        let tail: Vec<&str> = boot.console.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        println!("[{tag}] last console lines:\n  {}", tail.join("\n  "));
    }
    Ok(run)
}

/// One line of progress per guest step, or the whole console.
fn progress(tag: &str, at: Duration, line: &str, console: bool) {
    let at = at.as_secs_f64();
    if console {
        println!("[{tag}] {at:6.1}s | {line}");
        return;
    }
    let Some(rest) = line.split_once("SONDE-VM: ").map(|(_, r)| r) else {
        return;
    };
    let mut words = rest.splitn(3, ' ');
    let what = match (words.next(), words.next(), words.next()) {
        (Some("kernel"), Some(k), _) => format!("guest up: {k}"),
        (Some("exit"), Some(step), Some(code)) => format!("{step}: exit {code}"),
        (Some("error"), Some(step), Some(msg)) => format!("{step}: ERROR {msg}"),
        (Some("done"), ..) => "guest done".to_owned(),
        _ => return,
    };
    println!("[{tag}] {at:6.1}s {what}");
}

fn print_verdict(run: &KernelRun) {
    if run.passed() {
        println!("{}: pass", run.release);
    } else {
        println!("{}: FAIL", run.release);
        for f in run.failures() {
            println!("  - {f}");
        }
    }
}

/// `sonde check` per profile on this machine's kernel (the integration
/// tests cover its counts).
fn host_checks(
    sonde: &Path,
    cache: &Path,
    profiles: &[&'static Profile],
) -> anyhow::Result<KernelRun> {
    if !util::is_root() {
        bail!("`sonde check` needs root");
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let dir = cache.join("host");
    fs::create_dir_all(&dir)?;
    let mut checks = Vec::new();
    for &p in profiles {
        let config = dir.join(format!("{}.toml", p.name));
        fs::write(&config, p.config_toml())?;
        // coreutils `timeout`: a hung check cannot hold the run.
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", "120"])
            .arg(sonde)
            .arg("check")
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1");
        let out = cmd
            .output()
            .with_context(|| format!("could not run `{}`", util::display(&cmd)))?;
        let lines = |b: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let check = CheckOutput::parse(&lines(&out.stdout), &lines(&out.stderr), out.status.code());
        println!(
            "  check:{}: exit {}",
            p.name,
            out.status
                .code()
                .map_or("signal".to_owned(), |c| c.to_string())
        );
        checks.push((p, check));
    }
    Ok(results::judge_host(&release, checks))
}

/// `abc123def456`, or with ` (uncommitted changes)` when the tree is dirty.
fn revision() -> String {
    let sha = util::stdout_of(util::command("git").args(["rev-parse", "--short=12", "HEAD"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "an unknown revision".to_owned());
    let dirty = util::stdout_of(util::command("git").args(["status", "--porcelain"]))
        .is_some_and(|s| !s.trim().is_empty());
    if dirty {
        format!("commit {sha} with uncommitted changes")
    } else {
        format!("commit {sha}")
    }
}

/// A file removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
