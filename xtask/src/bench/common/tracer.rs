//! The syscall tracers the scenarios compare (nothing, the empty program
//! pairs, Sonde, bpftrace) and the timed syscall loop they are measured on.

use std::time::Duration;

use sonde_tests::process::field;

use super::{
    bins::{self, BPFTRACE_SYSCALLS, Bins, Running},
    start_agent,
};

/// Sonde with syscall telemetry only; the slow-syscall threshold stays at
/// its default (armed).
pub const SONDE_SYSCALLS_ONLY: &str = "[network]\nenabled = false\n[mapek]\ngovern_cost = false\n";

/// How long one timed loop may take before it is killed.
const LOOP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracer {
    None,
    /// Empty programs on sys_enter/sys_exit as raw tracepoints.
    RawPair,
    /// The same as classic tracepoints.
    ClassicPair,
    /// `sonde run` with [`SONDE_SYSCALLS_ONLY`].
    Sonde,
    /// bpftrace with [`BPFTRACE_SYSCALLS`].
    Bpftrace,
}

impl Tracer {
    pub fn name(self) -> &'static str {
        match self {
            Tracer::None => "none",
            Tracer::RawPair => "empty raw-tp pair",
            Tracer::ClassicPair => "empty classic-tp pair",
            Tracer::Sonde => "Sonde",
            Tracer::Bpftrace => "bpftrace",
        }
    }

    /// Attaches the tracer; it detaches when the result is dropped.
    pub fn start(self, bins: &Bins) -> anyhow::Result<Running> {
        Ok(match self {
            Tracer::None => Running::Nothing,
            Tracer::RawPair => Running::Proc(bins::baseline(
                bins,
                &["syscalls", "--hook", "raw_tracepoint"],
            )?),
            Tracer::ClassicPair => {
                Running::Proc(bins::baseline(bins, &["syscalls", "--hook", "tracepoint"])?)
            }
            Tracer::Sonde => Running::Agent(start_agent(bins, SONDE_SYSCALLS_ONLY, &[])?),
            Tracer::Bpftrace => Running::Bpftrace(bins::bpftrace(BPFTRACE_SYSCALLS)?.0),
        })
    }
}

/// ns per syscall of `syscall-loop K N` (timed inside the child), one
/// child per CPU in `cpus`, all at once; the mean over the children.
pub fn ns_per_call(bins: &Bins, k: usize, n: u64, cpus: &[usize]) -> anyhow::Result<f64> {
    let (k, n) = (k.to_string(), n.to_string());
    let children = cpus
        .iter()
        .map(|&c| bins::spawn_workload(bins, None, &[c], &["syscall-loop", &k, &n]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut total = 0.0;
    let count = children.len() as f64;
    for child in children {
        let out = child.finish(LOOP_TIMEOUT)?;
        let line = out.lines().last().unwrap_or_default();
        total += field(line, "elapsed_ns")? / field(line, "calls")?;
    }
    Ok(total / count)
}
