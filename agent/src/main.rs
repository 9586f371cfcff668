//! Sonde's daemon entry point: parse the command line and run the command
//! (the library's [`sonde::daemon`]). Exit codes: 0 ok, 1 runtime or
//! environment error (missing privileges, kernel without a hook, port in
//! use), 2 usage or config error.

use std::process::ExitCode;

use clap::Parser;
use sonde::{
    cli::{Cli, Command},
    daemon::{self, Failure},
};

fn main() -> ExitCode {
    sonde::heap::configure();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are "errors" that exit 0.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Run(args) => daemon::run(args),
        Command::Check(args) => daemon::check(args),
        Command::Config(cmd) => daemon::config(cmd),
        Command::Baseline(cmd) => daemon::baseline(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sonde: error: {failure}");
            ExitCode::from(match failure {
                Failure::Usage(_) => 2,
                Failure::Runtime(_) => 1,
                Failure::GaveUp(_) => sonde::tasks::EXIT_GAVE_UP,
            })
        }
    }
}
