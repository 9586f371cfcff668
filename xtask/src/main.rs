//! Sonde's developer commands, run as `cargo xtask <command>` (the alias is in
//! `.cargo/config.toml`). One module per command; shared helpers in `util`.

mod run;
mod test;
mod toolchain;
mod util;

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
    /// Format check, both clippy passes, unit tests and the privileged integration tests.
    Test(test::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(opts) => run::run(opts),
        Command::Test(opts) => test::run(opts).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        // The chain, one line; no backtrace even with RUST_BACKTRACE set.
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
