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

/// glibc raises its mmap threshold to the size of each large buffer freed,
/// so after one burst (a SYN flood filling the flow table) every later
/// large buffer comes from the heap and its pages stay with the process:
/// the agent's RSS keeps the burst's high-water mark for good (+9 MiB in a
/// soak hour). A fixed threshold keeps large buffers in mmaps, returned
/// when freed; two arenas bound per-thread heap fragmentation. (musl, the
/// container build, returns large buffers anyway.)
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    return_freed_memory();
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
