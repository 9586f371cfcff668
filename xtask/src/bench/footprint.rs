//! Scenario 5: what the agent process itself costs: memory, CPU idle and
//! under load, time to ready; next to bpftrace running the same probes.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use super::{
    Ctx, Def,
    common::{
        BenchNet,
        bins::{BPFTRACE_SYSCALLS, Running, bpftrace, start_ready, workload},
        kernel::{Mem, proc_cpu, proc_mem},
        net, start_agent,
        stats::{median, round_robin},
    },
    report::{Op, Scenario},
};

pub const DEF: Def = Def {
    id: "footprint",
    title: "Footprint",
    about: "The agent with its default configuration (syscalls, and the network on the bench \
            veth). *Ready* is spawn to `/health/startup` = 200 (bpftrace: spawn to its `BEGIN` \
            probe). RSS is VmRSS at the end of a window, in MB (10⁶ bytes); CPU is the \
            process's user + system time over the window, in % of one core (so it excludes \
            the kernel programs' own time, which runs in the traced processes). Idle: a 10 s \
            window after a 1 s settle, with the machine's own background activity. Load: \
            getppid paced at 100,000 calls/s on CPU 1 for 5 s; Sonde counts them (default \
            slow threshold), or, in the *events* variant (`slow_threshold_ms = 0.000001`, \
            `slow_ignore = []`), also turns every syscall into a ring-buffer event, which is \
            ~100,000 events/s. bpftrace runs the counting and timing script of the syscall \
            scenario.",
    run,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Sonde,
    SondeEvents,
    Bpftrace,
    /// `sonde baseline syscalls`: the same object loaded by a bare aya
    /// `EbpfLoader`, for the memory a loader needs at the least.
    BareLoader,
}

const VARIANTS: [Variant; 4] = [
    Variant::Sonde,
    Variant::SondeEvents,
    Variant::Bpftrace,
    Variant::BareLoader,
];
const LOAD_RATE: &str = "100000";

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Sonde => "Sonde",
            Variant::SondeEvents => "Sonde, every syscall an event",
            Variant::Bpftrace => "bpftrace",
            Variant::BareLoader => "bare aya loader, empty programs",
        }
    }

    /// The events variant is never idle; the bare loader is only a
    /// memory reference.
    fn windows(self) -> (bool, bool) {
        match self {
            Variant::Sonde | Variant::Bpftrace => (true, true),
            Variant::SondeEvents => (false, true),
            Variant::BareLoader => (true, false),
        }
    }
}

/// One figure of a measurement window's (memory, CPU %).
type Window = fn(&(Mem, f64)) -> f64;
/// One of a sample's windows.
type Pick = fn(&Sample) -> Option<(Mem, f64)>;

#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    ready_ms: f64,
    idle: Option<(Mem, f64)>,
    load: Option<(Mem, f64)>,
}

fn run(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let idle_secs = ctx.pick(10, 2);
    let load_secs = ctx.pick(5, 1);
    let _net = BenchNet::create()?;
    let samples = round_robin(
        ctx.pick(2, 1),
        &VARIANTS,
        |_| Ok(()),
        |&v| {
            let (running, ready) = match v {
                Variant::Sonde | Variant::SondeEvents => {
                    let config = if v == Variant::Sonde {
                        ""
                    } else {
                        "[syscalls]\nslow_threshold_ms = 0.000001\nslow_ignore = []\n"
                    };
                    let agent = start_agent(&ctx.bins, config, &[net().host_if])?;
                    let ready = agent.startup().unwrap_or_default();
                    (Running::Agent(agent), ready)
                }
                Variant::Bpftrace => {
                    let (b, ready) = bpftrace(BPFTRACE_SYSCALLS)?;
                    (Running::Bpftrace(b), ready)
                }
                Variant::BareLoader => {
                    let mut cmd = Command::new(&ctx.bins.sonde);
                    cmd.args(["baseline", "syscalls"]);
                    let (proc, ready) = start_ready("baseline-syscalls", cmd)?;
                    (Running::Proc(proc), ready)
                }
            };
            let (idle, load) = v.windows();
            let x = measure(
                ctx,
                running.pid(),
                ready,
                idle.then_some(idle_secs),
                load.then_some(load_secs),
            )?;
            print(v, &x);
            Ok(x)
        },
    )?;
    let col = |v: Variant| &samples[VARIANTS.iter().position(|&x| x == v).unwrap_or(0)];
    let sonde_ready: Vec<f64> = [Variant::Sonde, Variant::SondeEvents]
        .iter()
        .flat_map(|&v| col(v).iter().map(|x| x.ready_ms))
        .collect();
    s.figure("Sonde: spawn to ready", "ms", &sonde_ready);
    s.figure(
        "bpftrace: spawn to ready",
        "ms",
        &col(Variant::Bpftrace)
            .iter()
            .map(|x| x.ready_ms)
            .collect::<Vec<_>>(),
    );
    let pick = |v: Variant, window: Pick, f: Window| -> Vec<f64> {
        col(v)
            .iter()
            .filter_map(|x| window(x).as_ref().map(f))
            .collect()
    };
    let idle = |v: Variant, f: Window| pick(v, |x| x.idle, f);
    let windows: [(&str, Pick); 2] = [("idle", |x| x.idle), ("100k syscalls/s", |x| x.load)];
    let figures: [(&str, &str, Window); 4] = [
        ("RSS", "MB", |x| x.0.rss),
        ("RSS, anonymous", "MB", |x| x.0.anon),
        ("RSS, file-backed", "MB", |x| x.0.file),
        // CPU may round to 0 in a quiet window.
        ("CPU", "% of a core", |x| x.1),
    ];
    for v in VARIANTS {
        for (label, window) in windows {
            for (name, unit, f) in figures {
                let values = pick(v, window, f);
                if !values.is_empty() {
                    s.figure_any(format!("{}, {label}: {name}", v.name()), unit, &values);
                }
            }
        }
    }
    s.note(format!(
        "Sonde's idle RSS is {:.1} MB anonymous (heap, stacks) + {:.1} MB file-backed (the \
         binary, libc); a bare aya loader of the same object holds {:.1} MB + {:.1} MB.",
        median(&idle(Variant::Sonde, |x| x.0.anon)),
        median(&idle(Variant::Sonde, |x| x.0.file)),
        median(&idle(Variant::BareLoader, |x| x.0.anon)),
        median(&idle(Variant::BareLoader, |x| x.0.file)),
    ));
    s.target(
        "Sonde: idle RSS",
        "MB",
        &idle(Variant::Sonde, |x| x.0.rss),
        Op::AtMost,
        25.0,
    );
    s.target(
        "Sonde: spawn to ready",
        "ms",
        &sonde_ready,
        Op::AtMost,
        500.0,
    );
    s.target(
        "Sonde: idle CPU",
        "% of a core",
        &idle(Variant::Sonde, |x| x.1),
        Op::AtMost,
        1.0,
    );
    s.raw = serde_json::json!({
        "idle_seconds": idle_secs,
        "load_seconds": load_secs,
        "load_rate": LOAD_RATE,
    });
    Ok(())
}

fn print(v: Variant, x: &Sample) {
    let show = |label: &str, w: Option<(Mem, f64)>| {
        w.map(|(mem, cpu)| format!("{label} {:5.1} MB {cpu:5.2}%", mem.rss))
            .unwrap_or_default()
    };
    println!(
        "{:<32} ready {:7.1} ms {:<24} {}",
        v.name(),
        x.ready_ms,
        show("idle", x.idle),
        show("load", x.load)
    );
}

/// An idle window and a load window (each when given), for process `pid`.
fn measure(
    ctx: &Ctx,
    pid: u32,
    ready: Duration,
    idle_secs: Option<u64>,
    load_secs: Option<u64>,
) -> anyhow::Result<Sample> {
    std::thread::sleep(Duration::from_secs(1));
    let window = |work: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<(Mem, f64)> {
        let (cpu0, t0) = (proc_cpu(pid)?, Instant::now());
        work()?;
        let cpu = (proc_cpu(pid)? - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        Ok((proc_mem(pid)?, cpu))
    };
    let idle = idle_secs
        .map(|secs| {
            window(&|| {
                std::thread::sleep(Duration::from_secs(secs));
                Ok(())
            })
        })
        .transpose()?;
    let load = load_secs
        .map(|secs| {
            window(&|| {
                workload(
                    &ctx.bins,
                    None,
                    &[1],
                    &["getppid-rate", LOAD_RATE, &secs.to_string()],
                    Duration::from_secs(secs + 30),
                )
                .map(drop)
            })
        })
        .transpose()?;
    Ok(Sample {
        ready_ms: ready.as_secs_f64() * 1000.0,
        idle,
        load,
    })
}
