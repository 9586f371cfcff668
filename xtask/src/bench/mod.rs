//! `cargo xtask bench [--quick]`: what Sonde costs, measured side by side
//! with its baselines (no program, empty programs on the same hooks,
//! bpftrace) in one run. One module per scenario; shared helpers in
//! `common` (and the test harness, `sonde_tests`); the result model and its renderings in `report` and `chart`.
//!
//! A full run writes `bench/results/<date>.{json,md,png}` and regenerates
//! `docs/performance.md`; `--quick` (the smoke run in `cargo xtask test`)
//! and `--only` write to `target/bench/` and leave those alone.

mod chart;
pub(crate) mod common;
mod families;
mod footprint;
mod node;
mod packets;
mod report;
mod ring;
mod scaling;
mod scrape;
mod syscalls;

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};

use crate::util;
use common::Bins;
use report::{Environment, Report, Scenario};
use sonde_tests::{process::Scratch, sys};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Short run (about 4 minutes): every scenario, fewer rounds, shorter
    /// windows. Checks that each produces sane numbers; writes to target/bench.
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma-separated ids: syscalls, packets,
    /// families, ring, scrape, footprint, scaling, node); results go to
    /// target/bench.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measure the release binaries already in target/release instead of
    /// building them first.
    #[arg(long)]
    no_build: bool,
}

impl Options {
    /// `--quick`: the smoke run.
    pub fn quick() -> Options {
        Options {
            quick: true,
            only: Vec::new(),
            no_build: false,
        }
    }
}

/// What every scenario gets.
pub struct Ctx {
    pub quick: bool,
    pub bins: Bins,
}

impl Ctx {
    /// `full` in a full run, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// A scenario: its table heading and what it measures, and the function
/// that fills in its figures (partial results are kept when it fails).
pub struct Def {
    pub id: &'static str,
    pub title: &'static str,
    pub about: &'static str,
    pub run: fn(&Ctx, &mut Scenario) -> anyhow::Result<()>,
}

const SCENARIOS: [Def; 8] = [
    syscalls::DEF,
    packets::DEF,
    families::DEF,
    ring::DEF,
    scrape::DEF,
    footprint::DEF,
    scaling::DEF,
    node::DEF,
];

/// Tools the scenarios run, and the Debian package of each.
const TOOLS: [(&str, &str); 10] = [
    ("bpftrace", "bpftrace"),
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("iperf3", "iperf3"),
    ("wrk", "wrk"),
    ("prometheus", "prometheus"),
    ("taskset", "util-linux"),
    ("stress-ng", "stress-ng"),
    ("iptables", "iptables"),
    ("losetup", "mount"),
];

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::bench::common::use_net(&crate::bench::common::BENCH);
    if !util::is_root() {
        bail!(
            "cargo xtask bench loads eBPF programs, creates a network namespace and sets \
             kernel.bpf_stats_enabled: run it as root (e.g. `sudo -E cargo xtask bench`)"
        );
    }
    for id in &opts.only {
        if !SCENARIOS.iter().any(|d| d.id == id) {
            bail!(
                "--only {id}: no such scenario (one of {})",
                SCENARIOS.map(|d| d.id).join(", ")
            );
        }
    }
    crate::bootstrap::ensure_tools(&TOOLS, "the benchmark")?;
    if libc_nproc() < 2 {
        bail!("the benchmark pins load to CPU 1 and needs at least 2 CPUs");
    }
    let start = Instant::now();
    let ctx = Ctx {
        quick: opts.quick,
        bins: Bins::release(opts.no_build)?,
    };
    sys::mount_tracefs(false)?;
    let environment = environment(&ctx)?;
    let _scratch = Scratch::create()?;

    let mut scenarios = Vec::new();
    for def in SCENARIOS
        .iter()
        .filter(|d| opts.only.is_empty() || opts.only.iter().any(|o| o == d.id))
    {
        util::header(&format!("bench: {}", def.title));
        let mut s = Scenario::new(def.id, def.title, def.about);
        let t = Instant::now();
        if let Err(e) = (def.run)(&ctx, &mut s) {
            println!("{} failed: {e:#}", def.id);
            s.error = Some(format!("{e:#}"));
        }
        s.duration_s = t.elapsed().as_secs_f64();
        println!("--- {}: {}", def.id, util::human(t.elapsed()));
        scenarios.push(s);
    }

    let report = Report {
        date: util::today(),
        quick: opts.quick,
        environment,
        duration_s: start.elapsed().as_secs_f64(),
        scenarios,
    };
    let published = !opts.quick && opts.only.is_empty();
    write_results(&report, published)?;
    check_sane(&report)?;
    println!("\nbench: done in {}", util::human(start.elapsed()));
    Ok(())
}

fn libc_nproc() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn environment(ctx: &Ctx) -> anyhow::Result<Environment> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let first = |s: Option<String>| {
        s.and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_default()
    };
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_default();
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_default();
    let dirty = util::stdout_of(util::command("git").args(["status", "--porcelain"]))
        .is_some_and(|s| !s.trim().is_empty());
    let rev = first(util::stdout_of(util::command("git").args([
        "rev-parse",
        "--short",
        "HEAD",
    ])));
    Ok(Environment {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpu_model,
        nproc: libc_nproc(),
        memory_gib: mem_kib / (1024.0 * 1024.0),
        sonde_version: first(util::stdout_of(
            util::command(&ctx.bins.sonde).arg("--version"),
        ))
        .trim_start_matches("sonde ")
        .to_owned(),
        git_revision: if dirty { format!("{rev}+changes") } else { rev },
        bpftrace_version: first(util::stdout_of(util::command("bpftrace").arg("--version"))),
        loadavg_at_start: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    })
}

fn write_results(report: &Report, published: bool) -> anyhow::Result<()> {
    let root = util::workspace_root();
    let (dir, stem): (PathBuf, String) = if published {
        (root.join("bench/results"), report.date.clone())
    } else {
        let kind = if report.quick { "quick" } else { "partial" };
        (
            util::target_dir().join("bench"),
            format!("{kind}-{}", report.date),
        )
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(format!("{stem}.json"));
    let md_path = dir.join(format!("{stem}.md"));
    let png = dir.join(format!("{stem}.png"));

    fs::write(&json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let md = report::markdown(report, "#");
    fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    let panels: Vec<&report::Panel> = report.scenarios.iter().flat_map(|s| &s.charts).collect();
    let chart_ok = match chart::draw(&panels, &png) {
        Ok(()) => true,
        Err(e) => {
            println!("warning: no chart: {e:#}");
            false
        }
    };
    println!("\n{md}");
    println!("results: {} and {}", json.display(), md_path.display());
    if chart_ok {
        println!("chart:   {}", png.display());
    }
    if published {
        let doc = root.join("docs/performance.md");
        fs::create_dir_all(root.join("docs"))?;
        let png_name = format!("{stem}.png");
        // The measured causes of the targets' misses: written by hand
        // (they come from experiments beside the runs), kept on the page.
        let analysis_path = root.join("bench/analysis.md");
        let analysis = match fs::read_to_string(&analysis_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", analysis_path.display()));
            }
        };
        fs::write(
            &doc,
            report::performance_doc(
                report,
                &report::markdown(report, "##"),
                &png_name,
                analysis.as_deref(),
            ),
        )
        .with_context(|| format!("writing {}", doc.display()))?;
        println!("updated: {}", doc.display());
    }
    Ok(())
}

/// Every scenario ran and produced finite, non-zero figures (no timing
/// thresholds: this is what the smoke run in `cargo xtask test` checks).
fn check_sane(report: &Report) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for s in &report.scenarios {
        if let Some(e) = &s.error {
            problems.push(format!("{}: {e}", s.id));
        }
        if s.figures.is_empty() {
            problems.push(format!("{}: no figures", s.id));
        }
        for f in &s.figures {
            // Unchecked figures (differences, losses, ratios of them) may be
            // zero, negative or even undefined on a noisy machine.
            let sane = !f.checked || f.samples.iter().all(|&x| x.is_finite() && x > 0.0);
            if f.samples.is_empty() || !sane {
                problems.push(format!("{}: {} = {:?}", s.id, f.name, f.samples));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "the benchmark's numbers are not sane:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}
