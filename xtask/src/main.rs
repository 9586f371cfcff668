//! Sonde's developer commands, run as `cargo xtask <command>` (the alias is in
//! `.cargo/config.toml`). One module per command; shared helpers in `util`.

mod bench;
mod bootstrap;
mod eval;
mod fuzz;
mod run;
mod soak;
mod stack;
mod test;
mod toolchain;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Sonde's developer commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the agent (installing the eBPF toolchain if needed) and run it as root.
    Run(run::Options),
    /// Install what the suite needs, then format check, both clippy passes, unit tests, fuzz smoke,
    /// the privileged integration tests, kernel matrix, stack, bench, eval and soak smoke runs.
    Test(test::Options),
    /// The agent plus a real Prometheus and Alertmanager on loopback, to see it all working.
    Stack(stack::Options),
    /// Measure Sonde's cost side by side with its baselines (root); writes bench/results/.
    Bench(bench::Options),
    /// Score the anomaly detector on injected incidents against a 3-sigma detector (root); writes docs/eval.md.
    Eval(eval::Options),
    /// An hour (or --duration) of the agent under load, churn, reloads, collector outages and
    /// incidents, sampling its memory, fds, maps and series (root); writes target/soak/.
    Soak(soak::Options),
    /// Build the cargo-fuzz targets (agent/fuzz) and run each for N seconds; fails on a crash.
    Fuzz(fuzz::Options),
    /// Boot Debian kernels in qemu and run sonde check and the integration tests inside; writes docs/kernels.md.
    VmTest(vm::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(opts) => run::run(opts),
        Command::Test(opts) => test::run(opts).map(|()| ExitCode::SUCCESS),
        Command::Stack(opts) => stack::run(opts).map(|()| ExitCode::SUCCESS),
        Command::Bench(opts) => bench::run(opts).map(|()| ExitCode::SUCCESS),
        Command::Eval(opts) => eval::run(opts).map(|()| ExitCode::SUCCESS),
        Command::Soak(opts) => soak::run(opts).map(|()| ExitCode::SUCCESS),
        Command::Fuzz(opts) => fuzz::run(opts).map(|()| ExitCode::SUCCESS),
        Command::VmTest(opts) => vm::run(opts).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        // The chain, one line; no backtrace even with RUST_BACKTRACE set.
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
