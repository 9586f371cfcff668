//! The binaries under measurement and the programs Sonde is compared
//! with: the hidden `sonde baseline` programs and bpftrace.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use sonde_tests::{
    Agent,
    process::{self, Proc},
    referee::Bpftrace,
};

/// How long a program may take to attach before the scenario fails.
const READY_TIMEOUT: Duration = super::READY_TIMEOUT;

/// bpftrace doing what Sonde's syscall programs do: count and time every
/// syscall, per syscall id.
pub const BPFTRACE_SYSCALLS: &str = "tracepoint:raw_syscalls:sys_enter { @s[tid] = nsecs; } \
tracepoint:raw_syscalls:sys_exit /@s[tid]/ { @c[args->id] = count(); \
@h[args->id] = hist(nsecs - @s[tid]); delete(@s[tid]); }";

/// The release binaries the scenarios run.
#[derive(Debug, Clone)]
pub struct Bins {
    pub sonde: PathBuf,
    pub workload: PathBuf,
}

impl Bins {
    /// The release binaries in target/release, built first (with the
    /// toolchain installed if need be) unless `no_build`.
    pub fn release(no_build: bool) -> anyhow::Result<Bins> {
        use crate::{bootstrap, util};
        if !no_build {
            util::header("toolchain and release build");
            bootstrap::ensure_build()?;
            util::run(util::cargo().args(["build", "--release", "-p", "sonde"]))?;
            util::run(util::cargo().args(["build", "--release", "-p", "sonde-tests", "--bins"]))?;
        }
        let release = util::target_dir().join("release");
        let bins = Bins {
            sonde: release.join("sonde"),
            workload: release.join("sonde-workload"),
        };
        for bin in [&bins.sonde, &bins.workload] {
            if !bin.is_file() {
                bail!("{} is missing: run without --no-build", bin.display());
            }
        }
        Ok(bins)
    }
}

/// A started variant of a scenario (nothing, a helper process, bpftrace
/// or the agent); stopped on drop.
pub enum Running {
    Nothing,
    Proc(Proc),
    Bpftrace(Bpftrace),
    Agent(Agent),
}

impl Running {
    /// The process's pid (0 for nothing).
    pub fn pid(&self) -> u32 {
        match self {
            Running::Nothing => 0,
            Running::Proc(p) => p.pid(),
            Running::Bpftrace(b) => b.pid(),
            Running::Agent(a) => a.pid(),
        }
    }
}

/// A program that prints `ready` once attached: `sonde baseline ...` or
/// bpftrace (with a `BEGIN` that prints it). Returns it with the time to
/// ready.
pub fn start_ready(name: &str, cmd: Command) -> anyhow::Result<(Proc, Duration)> {
    let start = Instant::now();
    let mut proc = Proc::spawn(name, cmd)?;
    proc.wait_line("ready", READY_TIMEOUT)?;
    Ok((proc, start.elapsed()))
}

/// `sonde baseline ARGS...`, attached.
pub fn baseline(bins: &Bins, args: &[&str]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&bins.sonde);
    cmd.arg("baseline").args(args);
    Ok(start_ready(&format!("baseline-{}", args[0]), cmd)?.0)
}

/// bpftrace running `script`, attached (the tests' referee); with the
/// time to ready.
pub fn bpftrace(script: &str) -> anyhow::Result<(Bpftrace, Duration)> {
    // BEGIN runs once every probe is attached.
    let b = Bpftrace::launch(
        &format!("BEGIN {{ printf(\"ready\\n\"); }} {script}"),
        "ready",
    )?;
    let ready = b.ready_after();
    Ok((b, ready))
}

/// `sonde-workload ARGS...` run to completion (optionally in a namespace,
/// pinned to `cpus`); returns its last stdout line (the result line).
pub fn workload(
    bins: &Bins,
    netns: Option<&str>,
    cpus: &[usize],
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<String> {
    let proc = spawn_workload(bins, netns, cpus, args)?;
    let out = proc.finish(timeout)?;
    Ok(out.lines().last().unwrap_or_default().to_owned())
}

/// `flows` distinct UDP flows, one datagram each, from `peers` source
/// addresses of the plan's peer range into `to`, sent from its namespace
/// (`sonde-workload udp-flows`).
pub fn udp_flows(bins: &Bins, peers: u64, to: &str, flows: u64) -> anyhow::Result<String> {
    let net = super::net();
    workload(
        bins,
        Some(net.netns),
        &[1],
        &[
            "udp-flows",
            net.peers_first,
            &peers.to_string(),
            to,
            &flows.to_string(),
        ],
        Duration::from_secs(60),
    )
}

/// `sonde-workload ARGS...` started, not waited for.
pub fn spawn_workload(
    bins: &Bins,
    netns: Option<&str>,
    cpus: &[usize],
    args: &[&str],
) -> anyhow::Result<Proc> {
    let mut cmd = process::command(netns, &bins.workload);
    cmd.args(args);
    Ok(Proc::spawn_on(&format!("workload-{}", args[0]), cmd, cpus)?)
}
