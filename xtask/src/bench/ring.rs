//! Scenario 3: how many events per second Sonde's ring reader takes
//! without loss, next to a minimal reader of the same ring, and whether
//! losses are accounted for exactly under overload.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    Ctx, Def,
    common::{
        Agent, Proc, Scrape,
        bins::{self, spawn_workload},
        start_agent,
        stats::{ratio, round_robin},
    },
    report::{Op, Panel, Scenario, Series},
};

pub const DEF: Def = Def {
    id: "ring",
    title: "Ring buffer",
    about: "Every syscall of every process becomes a slow-syscall event (`slow_threshold_ms = \
            0.000001`, `slow_ignore = []`), so a paced getppid loop on CPU 1 \
            (`sonde-workload getppid-rate RATE SECONDS`) sets the event rate. Readers: Sonde \
            (network disabled, cost governance off so detail is never shed, `[collector] \
            interval_ms = 250` so the counters settle fast) and \
            `sonde baseline ring-reader` (the same kernel programs and 256 KiB ring, drained by \
            a reader that only counts). The rate steps up each round until a window loses \
            events; *max zero-loss rate* is the events/s actually produced (kernel count over \
            the window) in the last window without loss. *Overload*: unpaced getppid loops on \
            both CPUs; then production stops (Sonde: SIGHUP with `slow_threshold_ms = 0`; the \
            minimal reader: SIGTERM) and `produced − received − lost` must be exactly 0; what each \
            reader received per second then is its drain rate with a never-empty ring.",
    run,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Sonde,
    Minimal,
}

const READERS: [Reader; 2] = [Reader::Sonde, Reader::Minimal];

impl Reader {
    fn name(self) -> &'static str {
        match self {
            Reader::Sonde => "Sonde",
            Reader::Minimal => "minimal reader",
        }
    }
}

const EVERY_SYSCALL: &str = "[network]\nenabled = false\n\
[syscalls]\nslow_threshold_ms = 0.000001\nslow_ignore = []\n\
[collector]\ninterval_ms = 250\n[mapek]\ngovern_cost = false\n";
const NO_EVENTS: &str = "[network]\nenabled = false\n\
[syscalls]\nslow_threshold_ms = 0\nslow_ignore = []\n\
[collector]\ninterval_ms = 250\n[mapek]\ngovern_cost = false\n";
/// A rate no loop reaches: as fast as it can.
const UNPACED: u64 = 100_000_000;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One window at one offered rate.
#[derive(Debug, Clone, Copy, Serialize)]
struct Step {
    target_rate: u64,
    window_s: f64,
    produced: u64,
    received: u64,
    lost: u64,
}

impl Step {
    fn rate(&self) -> f64 {
        self.produced as f64 / self.window_s
    }

    fn loss(&self) -> f64 {
        self.lost as f64 / self.produced.max(1) as f64
    }
}

#[derive(Debug, Serialize)]
struct RoundResult {
    steps: Vec<Step>,
    max_zero_loss_rate: f64,
    overload: Step,
}

fn run(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let rates: &[u64] = ctx.pick(
        &[
            100_000, 150_000, 200_000, 300_000, 400_000, 550_000, 750_000, 1_000_000, UNPACED,
        ],
        &[50_000, UNPACED],
    );
    let secs = ctx.pick(2, 1);
    let results = round_robin(
        ctx.pick(3, 1),
        &READERS,
        |_| Ok(()),
        |&r| {
            let mut steps = Vec::new();
            let mut max = 0.0;
            for &rate in rates {
                let step = window(ctx, r, rate, secs, &[1])?;
                println!(
                    "{:<15} offered {:>9.0}/s: received {:>9} lost {:>8} ({:.2}%)",
                    r.name(),
                    step.rate(),
                    step.received,
                    step.lost,
                    step.loss() * 100.0
                );
                steps.push(step);
                if step.lost > 0 {
                    break;
                }
                max = step.rate();
            }
            let overload = window(ctx, r, UNPACED, secs, &[0, 1])?;
            println!(
                "{:<15} overload: produced {} received {} lost {} (off by {})",
                r.name(),
                overload.produced,
                overload.received,
                overload.lost,
                overload.produced as i64 - (overload.received + overload.lost) as i64
            );
            Ok(RoundResult {
                steps,
                max_zero_loss_rate: max,
                overload,
            })
        },
    )?;
    let by = |r: Reader| &results[READERS.iter().position(|&x| x == r).unwrap_or(0)];
    let max = |r: Reader| -> Vec<f64> { by(r).iter().map(|x| x.max_zero_loss_rate).collect() };
    for r in READERS {
        // The first window's rate shows the reader ran; the max may be 0
        // when even the first window lost events (a stall on a busy machine).
        let first: Vec<f64> = by(r)
            .iter()
            .filter_map(|x| Some(x.steps.first()?.rate()))
            .collect();
        s.figure(
            format!("{}: first window rate", r.name()),
            "events/s",
            &first,
        );
        s.figure_any(
            format!("{}: max zero-loss rate", r.name()),
            "events/s",
            &max(r),
        );
    }
    let sonde_vs_min = ratio(&max(Reader::Sonde), &max(Reader::Minimal));
    s.figure_any(
        "max zero-loss rate: Sonde / minimal reader",
        "×",
        &sonde_vs_min,
    );
    s.target(
        "max zero-loss rate: Sonde / minimal reader",
        "×",
        &sonde_vs_min,
        Op::AtLeast,
        0.8,
    );
    // Under overload the ring is never empty: what a reader receives per
    // second is how fast it drains, less sensitive to single stalls.
    let drained = |r: Reader| -> Vec<f64> {
        by(r)
            .iter()
            .map(|x| x.overload.received as f64 / x.overload.window_s)
            .collect()
    };
    for r in READERS {
        s.figure(
            format!("{}: received under overload", r.name()),
            "events/s",
            &drained(r),
        );
    }
    s.figure(
        "received under overload: Sonde / minimal reader",
        "×",
        &ratio(&drained(Reader::Sonde), &drained(Reader::Minimal)),
    );
    for r in READERS {
        let o: Vec<&Step> = by(r).iter().map(|x| &x.overload).collect();
        s.figure(
            format!("{}: overload produced rate", r.name()),
            "events/s",
            &o.iter().map(|x| x.rate()).collect::<Vec<_>>(),
        );
        s.figure_any(
            format!("{}: overload lost", r.name()),
            "%",
            &o.iter().map(|x| x.loss() * 100.0).collect::<Vec<_>>(),
        );
        let off: Vec<f64> = o
            .iter()
            .map(|x| x.produced as f64 - (x.received + x.lost) as f64)
            .collect();
        s.figure_any(
            format!("{}: overload produced − received − lost", r.name()),
            "events",
            &off,
        );
        s.target(
            format!("{}: produced − received − lost under overload", r.name()),
            "events",
            &off,
            Op::Equal,
            0.0,
        );
    }
    s.charts.push(Panel {
        title: "Ring buffer: events lost vs offered rate (round 1)".into(),
        x_label: "offered events/s".into(),
        y_label: "lost %".into(),
        log_x: false,
        series: READERS
            .iter()
            .filter_map(|&r| {
                let first = by(r).first()?;
                Some(Series {
                    name: r.name().into(),
                    points: first
                        .steps
                        .iter()
                        .map(|x| (x.rate(), x.loss() * 100.0))
                        .collect(),
                })
            })
            .collect(),
    });
    s.raw = serde_json::json!({
        "window_seconds": secs,
        "target_rates": rates,
        "rounds": READERS
            .iter()
            .map(|&r| (r.name(), by(r)))
            .collect::<std::collections::BTreeMap<_, _>>(),
    });
    Ok(())
}

/// One window: start the reader, produce events at `rate` per CPU in
/// `cpus` for `secs`, stop production, settle, count.
fn window(ctx: &Ctx, reader: Reader, rate: u64, secs: u64, cpus: &[usize]) -> anyhow::Result<Step> {
    let load = || -> anyhow::Result<()> {
        let (rate, secs) = (rate.to_string(), secs.to_string());
        let producers: Vec<Proc> = cpus
            .iter()
            .map(|&c| spawn_workload(&ctx.bins, None, &[c], &["getppid-rate", &rate, &secs]))
            .collect::<anyhow::Result<_>>()?;
        for p in producers {
            p.finish(Duration::from_secs(30))?;
        }
        Ok(())
    };
    match reader {
        Reader::Minimal => {
            let mut proc = bins::baseline(&ctx.bins, &["ring-reader"])?;
            let t0 = Instant::now();
            let loaded = load();
            proc.signal(libc::SIGTERM)?;
            let window_s = t0.elapsed().as_secs_f64();
            loaded?;
            proc.wait(Duration::from_secs(10))?;
            let out = proc.stdout();
            let line = out
                .lines()
                .rfind(|l| l.starts_with('{'))
                .ok_or_else(|| anyhow::anyhow!("ring-reader printed no counts: {out:?}"))?;
            let v: serde_json::Value = serde_json::from_str(line)?;
            let n = |k: &str| v[k].as_u64().unwrap_or_default();
            Ok(Step {
                target_rate: rate,
                window_s,
                produced: n("produced"),
                received: n("received"),
                lost: n("lost"),
            })
        }
        Reader::Sonde => {
            let agent = start_agent(&ctx.bins, EVERY_SYSCALL, &[])?;
            let t0 = Instant::now();
            let loaded = load();
            agent.rewrite_config(NO_EVENTS);
            agent.sighup();
            let window_s = t0.elapsed().as_secs_f64();
            loaded?;
            let m = settle(&agent)?;
            agent.stop()?;
            let n = |name: &str| m.sum(name, &[("ring", "syscall")]) as u64;
            Ok(Step {
                target_rate: rate,
                window_s,
                produced: n("sonde_events_produced_total"),
                received: n("sonde_events_total"),
                lost: n("sonde_events_lost_total"),
            })
        }
    }
}

/// Scrapes until the syscall ring's counters stop moving and add up
/// (received + lost = produced), or the timeout passes; the last scrape.
fn settle(agent: &Agent) -> anyhow::Result<Scrape> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let key = |m: &Scrape| {
        let n = |name: &str| m.sum(name, &[("ring", "syscall")]);
        (
            n("sonde_events_produced_total"),
            n("sonde_events_total"),
            n("sonde_events_lost_total"),
        )
    };
    let mut last = agent.try_metrics()?;
    loop {
        std::thread::sleep(Duration::from_millis(600));
        let m = agent.try_metrics()?;
        let (p, r, l) = key(&m);
        if key(&last) == (p, r, l) && r + l == p {
            return Ok(m);
        }
        if Instant::now() >= deadline {
            return Ok(m);
        }
        last = m;
    }
}
