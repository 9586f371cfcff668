//! Scenario 6: how the costs grow with the number of syscall ids in use,
//! with CPUs, and with flows.

use std::time::{Duration, Instant};

use super::{
    Ctx, Def,
    common::{
        BenchNet,
        bins::{spawn_workload, udp_flows},
        kernel::{QuietGate, proc_cpu, proc_mem},
        net, start_agent,
        stats::{median, per_round, round_robin},
        tracer::{Tracer, ns_per_call},
    },
    report::{Panel, Scenario, Series},
};

pub const DEF: Def = Def {
    id: "scaling",
    title: "Scaling",
    about: "*Syscall ids*: `sonde-workload syscall-loop K N` cycles through K cheap syscalls \
            (getppid, getpid, gettid, …; the last six fail with EBADF), pinned to CPU 1, with \
            no program and with Sonde (syscalls only); ns per call and Sonde's added ns. \
            *CPUs*: the getppid loop on CPU 1 alone, then one loop on each of the 2 CPUs at \
            once (mean ns per call of the two). *Flows*: Sonde with the network on the bench \
            veth (`[syscalls] enabled = false`, `max_flows = 131072`) after F distinct UDP flows \
            (distinct source ports and addresses, one datagram each, `sonde-workload \
            udp-flows`); over a window of collection cycles (1 s each): the agent's CPU time \
            per cycle and `sonde_collector_duration_seconds`, sampled each second.",
    run,
};

const VARIANTS: [Tracer; 2] = [Tracer::None, Tracer::Sonde];
const SINK_PORT: u16 = 40_003;
/// Source ports `udp-flows` spreads over per source address.
const PORTS_PER_ADDRESS: u64 = 50_000;

/// One round of one variant: ns per call for each K, then on 2 CPUs.
struct Loops {
    by_k: Vec<f64>,
    two_cpus: f64,
}

fn run(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    syscalls(ctx, s)?;
    flows(ctx, s)
}

fn syscalls(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let ks: &[usize] = ctx.pick(&[1, 2, 4, 8, 16, 32], &[1, 32]);
    let n: u64 = ctx.pick(1_000_000, 200_000);
    let mut gate = QuietGate::new(Duration::from_secs(ctx.pick(10, 3)));
    let results = round_robin(
        ctx.pick(3, 1),
        &VARIANTS,
        |_| gate.check(),
        |&v| {
            let _tracer = v.start(&ctx.bins)?;
            let by_k = ks
                .iter()
                .map(|&k| ns_per_call(&ctx.bins, k, n, &[1]))
                .collect::<anyhow::Result<Vec<f64>>>()?;
            let two_cpus = ns_per_call(&ctx.bins, 1, n, &[0, 1])?;
            println!(
                "{:<6} ns/call by K {:?}, getppid on 2 CPUs {two_cpus:.1}",
                v.name(),
                by_k.iter().map(|x| x.round()).collect::<Vec<_>>()
            );
            Ok(Loops { by_k, two_cpus })
        },
    )?;
    s.notes.extend(gate.note());
    let (none, sonde) = (&results[0], &results[1]);
    let at = |r: &[Loops], i: usize| -> Vec<f64> { r.iter().map(|x| x.by_k[i]).collect() };
    let mut none_line = Vec::new();
    let mut sonde_line = Vec::new();
    for (i, &k) in ks.iter().enumerate() {
        let added = per_round(&at(sonde, i), &at(none, i), |a, b| a - b);
        s.figure(
            format!("{k} syscall ids: none, ns per call"),
            "ns",
            &at(none, i),
        );
        s.figure(
            format!("{k} syscall ids: Sonde, ns per call"),
            "ns",
            &at(sonde, i),
        );
        s.figure_any(
            format!("{k} syscall ids: Sonde added ns per call"),
            "ns",
            &added,
        );
        none_line.push((k as f64, median(&at(none, i))));
        sonde_line.push((k as f64, median(&at(sonde, i))));
    }
    let two = |r: &[Loops]| -> Vec<f64> { r.iter().map(|x| x.two_cpus).collect() };
    let added_one = per_round(&at(sonde, 0), &at(none, 0), |a, b| a - b);
    let added_two = per_round(&two(sonde), &two(none), |a, b| a - b);
    s.figure("2 CPUs: none, ns per call", "ns", &two(none));
    s.figure("2 CPUs: Sonde, ns per call", "ns", &two(sonde));
    s.figure_any("1 CPU: Sonde added ns per call", "ns", &added_one);
    s.figure_any("2 CPUs: Sonde added ns per call", "ns", &added_two);
    s.charts.push(Panel {
        title: "ns per syscall vs syscall ids in use".into(),
        x_label: "distinct syscalls in the loop".into(),
        y_label: "ns per call".into(),
        log_x: true,
        series: vec![
            Series {
                name: "no program".into(),
                points: none_line,
            },
            Series {
                name: "Sonde".into(),
                points: sonde_line,
            },
        ],
    });
    s.charts.push(Panel {
        title: "Sonde's added ns per getppid: 1 vs 2 busy CPUs".into(),
        x_label: "CPUs running the loop".into(),
        y_label: "added ns per call".into(),
        log_x: false,
        series: vec![Series {
            name: "Sonde added".into(),
            points: vec![(1.0, median(&added_one)), (2.0, median(&added_two))],
        }],
    });
    Ok(())
}

fn flows(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let counts: &[u64] = ctx.pick(&[1, 100, 1_000, 10_000, 100_000], &[1, 1_000]);
    let window = ctx.pick(5, 2);
    let _net = BenchNet::create()?;
    let to = format!("{}:{SINK_PORT}", net().host_ip);
    let mut sink = spawn_workload(&ctx.bins, None, &[0], &["udp-sink", &to, "600"])?;
    sink.wait_line("ready", Duration::from_secs(5))?;
    let mut duration_line = Vec::new();
    let mut cpu_line = Vec::new();
    let mut raw = Vec::new();
    for &flows in counts {
        let agent = start_agent(
            &ctx.bins,
            "[syscalls]\nenabled = false\n[network]\nmax_flows = 131072\nflow_idle_timeout_s = 0\n[mapek]\ngovern_cost = false\n",
            &[net().host_if],
        )?;
        let addresses = flows.div_ceil(PORTS_PER_ADDRESS).max(1);
        udp_flows(&ctx.bins, addresses, &to, flows)?;
        // Wait for a collection that sees them all.
        let deadline = Instant::now() + Duration::from_secs(20);
        let active = loop {
            let active = agent.try_metrics()?.sum("sonde_flows_active", &[]);
            if active >= flows as f64 || Instant::now() >= deadline {
                break active;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let (cpu0, t0) = (proc_cpu(agent.pid())?, Instant::now());
        let mut durations = Vec::new();
        for _ in 0..window {
            std::thread::sleep(Duration::from_secs(1));
            let m = agent.try_metrics()?;
            durations.push(m.sum("sonde_collector_duration_seconds", &[]) * 1000.0);
        }
        let cycles = t0.elapsed().as_secs_f64(); // interval_ms = 1000
        let cpu_ms = (proc_cpu(agent.pid())? - cpu0) * 1000.0 / cycles;
        let rss = proc_mem(agent.pid())?.rss;
        agent.stop()?;
        let d = median(&durations);
        println!(
            "{flows:>7} flows ({active} active): collector {d:7.2} ms, agent CPU {cpu_ms:7.2} ms per cycle, RSS {rss:.1} MB"
        );
        s.figure(
            format!("{flows} flows: collector duration"),
            "ms",
            &durations,
        );
        s.figure_any(
            format!("{flows} flows: agent CPU per cycle"),
            "ms",
            &[cpu_ms],
        );
        s.figure(format!("{flows} flows: agent RSS"), "MB", &[rss]);
        duration_line.push((flows as f64, d));
        cpu_line.push((flows as f64, cpu_ms));
        raw.push(serde_json::json!({
            "flows": flows, "active": active, "collector_ms": durations,
            "cpu_ms_per_cycle": cpu_ms, "rss_mb": rss,
        }));
    }
    if let Some(&(flows, ms)) = duration_line.last() {
        s.note(format!(
            "At {flows:.0} flows a collection takes {ms:.0} ms, {:.1} µs per flow.",
            ms * 1000.0 / flows
        ));
    }
    s.charts.push(Panel {
        title: "Collection cost vs flows in the table".into(),
        x_label: "flows".into(),
        y_label: "ms per 1 s cycle".into(),
        log_x: true,
        series: vec![
            Series {
                name: "sonde_collector_duration_seconds".into(),
                points: duration_line,
            },
            Series {
                name: "agent CPU".into(),
                points: cpu_line,
            },
        ],
    });
    s.raw = serde_json::json!({ "flows": raw });
    Ok(())
}
