//! Scenario 1: what each syscall costs with Sonde attached, next to the
//! bare hooks and bpftrace.

use std::{collections::BTreeMap, time::Duration};

use super::{
    Ctx, Def,
    harness::{
        kernel,
        stats::{median, per_round, ratio, round_robin},
        tracer::{Tracer, ns_per_call},
    },
    report::{Op, Scenario},
};

pub const DEF: Def = Def {
    id: "syscalls",
    title: "Syscall overhead",
    about: "A child pinned to CPU 1 makes N getppid calls (`sonde-workload syscall-loop 1 N`, \
            timed inside the child). Variants: no program; empty programs on raw_syscalls \
            sys_enter/sys_exit as raw tracepoints and as classic tracepoints (`sonde baseline \
            syscalls`); Sonde with syscall telemetry only (network disabled; counts, errors, \
            latency histogram, slow-syscall events armed at the default 100 ms); bpftrace \
            counting and timing every syscall per id. *Added* is ns per call above no program \
            in the same round. Kernel ns per program run come from bpf_stats in a separate pass \
            (bpf_stats itself adds to each run, so the wall-clock rounds run without it).",
    run,
};

const VARIANTS: [Tracer; 5] = [
    Tracer::None,
    Tracer::RawPair,
    Tracer::ClassicPair,
    Tracer::Sonde,
    Tracer::Bpftrace,
];

/// The CPU the measured loop runs on.
const CPU: usize = 1;

fn run(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let rounds = ctx.pick(7, 2);
    let n: u64 = ctx.pick(2_000_000, 300_000);
    let mut gate = kernel::QuietGate::new(Duration::from_secs(ctx.pick(10, 3)));
    let samples = round_robin(
        rounds,
        &VARIANTS,
        |_| gate.check(),
        |&v| {
            let _tracer = v.start(&ctx.bins)?;
            let ns = ns_per_call(&ctx.bins, 1, n, &[CPU])?;
            println!("{:<22} {ns:8.1} ns/call", v.name());
            Ok(ns)
        },
    )?;
    let by = |t: Tracer| &samples[VARIANTS.iter().position(|&v| v == t).unwrap_or(0)];
    for &v in &VARIANTS {
        s.figure(format!("{}: ns per call", v.name()), "ns", by(v));
    }
    let none = by(Tracer::None);
    let added = |t: Tracer| per_round(by(t), none, |a, b| a - b);
    for &v in &VARIANTS[1..] {
        s.figure_any(format!("{}: added ns per call", v.name()), "ns", &added(v));
    }
    let sonde_vs_raw = ratio(&added(Tracer::Sonde), &added(Tracer::RawPair));
    let sonde_vs_bpftrace = ratio(&added(Tracer::Sonde), &added(Tracer::Bpftrace));
    s.figure_any("Sonde added / empty raw-tp pair added", "×", &sonde_vs_raw);
    s.figure_any("Sonde added / bpftrace added", "×", &sonde_vs_bpftrace);
    s.target(
        "Sonde added / empty raw-tp pair added",
        "×",
        &sonde_vs_raw,
        Op::AtMost,
        1.5,
    );
    s.target(
        "Sonde added / bpftrace added",
        "×",
        &sonde_vs_bpftrace,
        Op::AtMost,
        0.35,
    );
    s.notes.extend(gate.note());

    // Kernel-side cost per program run, from bpf_stats.
    let per_prog = bpf_stats_pass(ctx, n)?;
    for (name, v) in &per_prog {
        s.figure(format!("bpf_stats: {name} ns per run"), "ns", v);
    }
    let pair = |a: &str, b: &str| -> Vec<f64> {
        match (per_prog.get(a), per_prog.get(b)) {
            (Some(x), Some(y)) => per_round(x, y, |p, q| p + q),
            _ => Vec::new(),
        }
    };
    let sonde_pair = pair("sonde_sys_enter_raw", "sonde_sys_exit_raw");
    let empty_pair = pair("baseline_sys_enter_raw", "baseline_sys_exit_raw");
    if !sonde_pair.is_empty() && !empty_pair.is_empty() {
        s.figure_any(
            "bpf_stats: Sonde enter+exit / empty pair enter+exit",
            "×",
            &ratio(&sonde_pair, &empty_pair),
        );
        s.note(format!(
            "In the kernel (bpf_stats, which adds its own clock reads to every run): Sonde's \
             enter + exit programs take {:.0} ns per syscall, the empty pair {:.0} ns, so \
             Sonde's program bodies do {:.0} ns of work per syscall.",
            median(&sonde_pair),
            median(&empty_pair),
            median(&sonde_pair) - median(&empty_pair)
        ));
    }
    s.raw = serde_json::json!({ "calls_per_loop": n, "cpu": CPU });
    Ok(())
}

/// ns per run of every program of the empty raw pair and of Sonde, with
/// bpf_stats on, over the same loop; by program name, one sample a round.
fn bpf_stats_pass(ctx: &Ctx, n: u64) -> anyhow::Result<BTreeMap<String, Vec<f64>>> {
    let _stats = kernel::BpfStats::enable()?;
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let variants = [Tracer::RawPair, Tracer::Sonde];
    round_robin(
        ctx.pick(3, 1),
        &variants,
        |_| Ok(()),
        |&v| {
            let existing: Vec<u64> = kernel::progs()?.iter().map(|p| p.id).collect();
            let _tracer = v.start(&ctx.bins)?;
            let ours = |all: Vec<kernel::Prog>| -> Vec<kernel::Prog> {
                all.into_iter()
                    .filter(|p| !existing.contains(&p.id))
                    .collect()
            };
            let before = ours(kernel::progs()?);
            ns_per_call(&ctx.bins, 1, n, &[CPU])?;
            let after = ours(kernel::progs()?);
            for (name, ns) in kernel::ns_per_run(&before, &after) {
                println!("bpf_stats {name:<26} {ns:8.1} ns/run");
                out.entry(name).or_default().push(ns);
            }
            Ok(())
        },
    )?;
    Ok(out)
}
