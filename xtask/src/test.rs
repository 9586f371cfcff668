//! `cargo xtask test [--no-integration]`: everything CI checks, in order,
//! stopping at the first failure.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{
    bootstrap,
    toolchain::{self, BPF_TARGET, NIGHTLY, Purpose},
    util,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip the privileged integration tests (the other steps need no root).
    #[arg(long)]
    no_integration: bool,
}

type Step = (&'static str, fn() -> anyhow::Result<()>);

pub fn run(opts: Options) -> anyhow::Result<()> {
    // Everything the steps need is installed before the first build, so a
    // machine with only rustup gets through (and a missing package is named
    // now, not after minutes of building).
    let bootstrap: Step = if opts.no_integration {
        ("bootstrap: toolchain, build packages", || {
            toolchain::ensure(Purpose::Lint)?;
            bootstrap::ensure_build_packages()
        })
    } else {
        ("bootstrap: toolchain, targets, system packages", || {
            toolchain::ensure(Purpose::Lint)?;
            bootstrap::ensure_all()
        })
    };
    let mut steps: Vec<Step> = vec![
        bootstrap,
        ("rustfmt", fmt),
        ("clippy: user space", clippy_user),
        ("clippy: kernel programs", clippy_ebpf),
        ("unit tests", unit_tests),
        // Every fuzz target for 5 s from its seeds: the targets build and
        // nothing in the corpus crashes (~2 minutes warm).
        ("fuzz smoke (5 s per target)", crate::fuzz::smoke),
    ];
    if !opts.no_integration {
        steps.push(("integration tests (root)", integration_tests));
        // The fentry and kprobe tiers this machine's kernel lacks, proven on
        // Debian's 6.1 and 6.12 kernels under qemu (~1.5 min warm).
        steps.push(("kernel matrix (qemu)", kernel_matrix));
        // The newcomer's stack comes up: agent scraped by Prometheus, with
        // Alertmanager (a few seconds).
        steps.push(("stack (agent + Prometheus + Alertmanager)", stack_smoke));
        // Smoke run of the benchmark: every scenario runs and produces sane
        // numbers (no timing thresholds).
        steps.push(("bench --quick (root)", bench_quick));
        // Smoke run of the detector evaluation: three injected incidents
        // must each be detected and named right (~2 minutes).
        steps.push(("eval --smoke (root)", eval_smoke));
        // Two minutes of the soak: churn, reloads, a collector outage and
        // an incident; memory, fds and series flat, rings balanced, no
        // restart.
        steps.push(("soak --duration 2m (root)", soak_smoke));
    }

    let start = Instant::now();
    let total = steps.len();
    for (i, (name, step)) in steps.into_iter().enumerate() {
        util::header(&format!("[{}/{total}] {name}", i + 1));
        let step_start = Instant::now();
        if let Err(e) = step() {
            println!(
                "\nxtask test: FAILED at `{name}` after {} (total {})",
                util::human(step_start.elapsed()),
                util::human(start.elapsed())
            );
            return Err(e.context(format!("step `{name}` failed")));
        }
        println!("--- {name}: ok ({})", util::human(step_start.elapsed()));
    }
    if opts.no_integration {
        println!("\nintegration tests skipped (--no-integration)");
    }
    println!(
        "\nxtask test: all {total} steps passed in {}",
        util::human(start.elapsed())
    );
    Ok(())
}

fn fmt() -> anyhow::Result<()> {
    // `--all` covers every member, the eBPF crate included.
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))
}

fn clippy_user() -> anyhow::Result<()> {
    // Default members only: `--workspace` would pull agent-ebpf onto the host
    // target and unify agent-common's `user` feature into it.
    util::run(util::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
}

fn clippy_ebpf() -> anyhow::Result<()> {
    util::run(util::command("rustup").args([
        "run",
        NIGHTLY,
        "cargo",
        "clippy",
        "-p",
        "agent-ebpf",
        "--target",
        BPF_TARGET,
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

fn unit_tests() -> anyhow::Result<()> {
    util::run(util::cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "sonde-tests",
        "--exclude",
        "agent-ebpf",
    ]))
}

fn integration_tests() -> anyhow::Result<()> {
    let root = util::is_root();
    if !root {
        if util::in_ci() {
            bail!(
                "the integration tests load eBPF programs and need root; CI must run as root (or pass --no-integration)"
            );
        }
        if util::which("sudo").is_none() {
            bail!(
                "the integration tests need root and sudo is not installed: run `cargo xtask test` as root, or pass --no-integration"
            );
        }
        println!(
            "not root: the test binaries run through `sudo -E` (it may ask for your password)"
        );
    }
    // bpftrace (the referee in some tests) needs tracefs.
    sonde_tests::sys::mount_tracefs(!root)?;

    util::run(util::cargo().args(["build", "-p", "sonde"]))?;
    util::run(util::cargo().args(["build", "-p", "sonde-tests", "--bins"]))?;

    let debug = util::target_dir().join("debug");
    let mut test = util::cargo();
    test.env("SONDE_BIN", debug.join("sonde"))
        .env("SONDE_WORKLOAD_BIN", debug.join("sonde-workload"))
        .args(["test", "-p", "sonde-tests", "--no-fail-fast"]);
    if !root {
        // Build as the user, run only the test binaries as root, so target/
        // never gets root-owned files.
        test.args(["--config", r#"target."cfg(all())".runner = "sudo -E""#]);
    }
    util::run(test.args(["--", "--test-threads=1"]))
}

fn stack_smoke() -> anyhow::Result<()> {
    crate::stack::run(crate::stack::Options::smoke())
}

fn kernel_matrix() -> anyhow::Result<()> {
    crate::vm::run(crate::vm::Options::for_test())
}

fn bench_quick() -> anyhow::Result<()> {
    as_root(&["bench", "--quick"], || {
        crate::bench::run(crate::bench::Options::quick())
    })
}

fn eval_smoke() -> anyhow::Result<()> {
    as_root(&["eval", "--smoke"], || {
        crate::eval::run(crate::eval::Options::smoke())
    })
}

fn soak_smoke() -> anyhow::Result<()> {
    as_root(&["soak", "--duration", "2m"], || {
        crate::soak::run(crate::soak::Options::smoke())
    })
}

/// Runs a measuring command as root: in this process when root, else
/// builds the release binaries as the user (so target/ gets no root-owned
/// files) and runs `xtask ARGS --no-build` through sudo.
fn as_root(args: &[&str], here: fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    if util::is_root() {
        return here();
    }
    util::run(util::cargo().args(["build", "--release", "-p", "sonde"]))?;
    util::run(util::cargo().args(["build", "--release", "-p", "sonde-tests", "--bins"]))?;
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    util::run(
        Command::new("sudo")
            .arg("-E")
            .arg(xtask)
            .args(args)
            .arg("--no-build"),
    )
}
