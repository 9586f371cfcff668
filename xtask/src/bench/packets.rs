//! Scenario 2: the packet path through the host end of a veth pair, with
//! no program, with empty programs (TC or XDP on ingress, TC on egress),
//! and with Sonde (its default TC ingress, and XDP ingress).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use sonde_tests::{
    net::try_iface_stat,
    process::command,
    sys::{cmd, output},
};

use super::{
    Ctx, Def,
    common::{
        BenchNet, Bins, Proc,
        bins::{self, Running, spawn_workload},
        kernel::{self, CpuTimes},
        net, start_agent,
        stats::{Summary, median, per_round, ratio, round_robin},
    },
    report::{Op, Scenario, num},
};

pub const DEF: Def = Def {
    id: "packets",
    title: "Packet path",
    about: "Traffic from a network namespace into the root namespace over a veth pair; the \
            programs sit on the host end. UDP: `sonde-workload udp-flood` (64-byte datagrams, \
            `sendmmsg` 64 at a time, pinned to CPU 1) into a socket on the host (pinned to CPU \
            0). TCP: one iperf3 stream, namespace to host. Variants: no program; empty programs \
            (`sonde baseline packets`) with TC on both ingress and egress (`--ingress tc`, the \
            hooks Sonde takes on a veth) and with XDP_PASS on ingress instead (`--ingress xdp`); \
            Sonde with packet accounting and the flow table (`[syscalls] enabled = false`, cost \
            governance off), with \
            its default ingress (TC: `xdp_mode = \"auto\"` takes native XDP only on physical \
            NICs, and this is a veth) and, for comparison, with `xdp_mode = \"native\"` (XDP on \
            ingress). The target compares like with like: Sonde's added CPU against the empty \
            TC+TC pair's. Packets/s is the host end's rx_packets delta over the window. CPU per \
            packet is the machine's softirq time (the `softirq` column of /proc/stat, \
            tick-sampled on this kernel) delta over the packets; *busy* is all non-idle CPU time \
            (both CPUs, sender included). *Added* is above no program in the same round. The \
            added-softirq target is judged only when the empty TC+TC pair's own added softirq \
            CPU per packet is measurable (above zero in every one of at least 3 rounds, median \
            above 50 ns); otherwise its ratio is reported for information only. Kernel ns per \
            program run come from bpf_stats in a separate pass: short UDP flood windows (the \
            same traffic) for the empty pairs and both Sondes with `kernel.bpf_stats_enabled = \
            1`, for every program of the variant that ran in the window, by variant and program \
            (Sonde's include its non-packet hooks, which the window's processes also fire; \
            `baseline_tc` is one program on both TC hooks of an empty pair). bpf_stats adds its \
            own clock reads to every run, so the rounds above run without it.",
    run,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    None,
    /// Empty TC programs on ingress and egress: the hooks of Sonde's
    /// default on a veth, so the like-for-like floor.
    EmptyTc,
    /// Empty XDP_PASS on ingress, empty TC on egress: the floor of
    /// [`Variant::SondeXdp`].
    EmptyXdp,
    /// Sonde's default: on a veth, TC on ingress and egress.
    Sonde,
    /// Sonde with `xdp_mode = "native"`: XDP on ingress.
    SondeXdp,
}

const VARIANTS: [Variant; 5] = [
    Variant::None,
    Variant::EmptyTc,
    Variant::EmptyXdp,
    Variant::Sonde,
    Variant::SondeXdp,
];
/// The variants with programs, in the bpf_stats pass.
const STATS_VARIANTS: [Variant; 4] = [
    Variant::EmptyTc,
    Variant::EmptyXdp,
    Variant::Sonde,
    Variant::SondeXdp,
];
/// When the empty TC+TC pair's added softirq CPU per packet is measurable,
/// so that the target dividing by it can be judged: its median above
/// `FLOOR_MIN_NS` and every one of at least `FLOOR_MIN_ROUNDS` rounds above
/// zero. Softirq time is sampled at the tick here, which leaves tens of ns
/// per packet of noise in each window; a sign test over the rounds tells a
/// real floor from that (were the pair to add nothing, all of 5 rounds would
/// come out above zero 1 time in 32, one round half the time).
const FLOOR_MIN_NS: f64 = 50.0;
const FLOOR_MIN_ROUNDS: usize = 3;
const UDP_PORT: u16 = 40_000;
const TCP_PORT: u16 = 40_001;
const DATAGRAM: &str = "64";

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "no program",
            Variant::EmptyTc => "empty TC+TC",
            Variant::EmptyXdp => "empty XDP+TC",
            Variant::Sonde => "Sonde",
            Variant::SondeXdp => "Sonde, XDP ingress",
        }
    }

    /// Attaches the variant to the host end; it detaches when the result is
    /// dropped.
    fn start(self, bins: &Bins) -> anyhow::Result<Running> {
        Ok(match self {
            Variant::None => Running::Nothing,
            Variant::EmptyTc => Running::Proc(bins::baseline(
                bins,
                &["packets", "--interface", net().host_if, "--ingress", "tc"],
            )?),
            Variant::EmptyXdp => Running::Proc(bins::baseline(
                bins,
                &["packets", "--interface", net().host_if, "--ingress", "xdp"],
            )?),
            Variant::Sonde => Running::Agent(start_agent(
                bins,
                "[syscalls]\nenabled = false\n[mapek]\ngovern_cost = false\n",
                &[net().host_if],
            )?),
            Variant::SondeXdp => Running::Agent(start_agent(
                bins,
                "[syscalls]\nenabled = false\n[network]\nxdp_mode = \"native\"\n[mapek]\ngovern_cost = false\n",
                &[net().host_if],
            )?),
        })
    }
}

/// One figure of a [`Sample`].
type Field = fn(&Sample) -> f64;

#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    udp_pps: f64,
    udp_softirq_ns: f64,
    udp_busy_ns: f64,
    tcp_gbps: f64,
    tcp_softirq_us_per_mb: f64,
    tcp_busy_us_per_mb: f64,
}

fn run(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let rounds = ctx.pick(5, 1);
    let secs = ctx.pick(3, 1);
    let _net = BenchNet::create()?;
    let mut links = Vec::new();
    let samples = round_robin(
        rounds,
        &VARIANTS,
        |_| Ok(()),
        |&v| {
            let _running = v.start(&ctx.bins)?;
            if links.len() < VARIANTS.len() {
                let link = output(&mut cmd("ip", &["link", "show", "dev", net().host_if]))
                    .unwrap_or_default();
                let mode = if link.contains("xdpgeneric") {
                    "generic XDP"
                } else if link.contains("xdp") {
                    "native XDP"
                } else {
                    "no XDP"
                };
                links.push(format!("{}: {mode}", v.name()));
            }
            let mut sample = udp(ctx, secs)?;
            let tcp = tcp(secs)?;
            sample.tcp_gbps = tcp.tcp_gbps;
            sample.tcp_softirq_us_per_mb = tcp.tcp_softirq_us_per_mb;
            sample.tcp_busy_us_per_mb = tcp.tcp_busy_us_per_mb;
            println!(
                "{:<18} UDP {:>10.0} pkt/s {:6.0} ns softirq/pkt | TCP {:6.2} Gbit/s",
                v.name(),
                sample.udp_pps,
                sample.udp_softirq_ns,
                sample.tcp_gbps
            );
            Ok(sample)
        },
    )?;
    let col = |v: Variant, f: Field| -> Vec<f64> {
        samples[VARIANTS.iter().position(|&x| x == v).unwrap_or(0)]
            .iter()
            .map(f)
            .collect()
    };
    let metrics: [(&str, &str, Field); 6] = [
        ("UDP packets/s", "pkt/s", |x| x.udp_pps),
        ("UDP softirq CPU per packet", "ns", |x| x.udp_softirq_ns),
        ("UDP busy CPU per packet", "ns", |x| x.udp_busy_ns),
        ("TCP throughput", "Gbit/s", |x| x.tcp_gbps),
        ("TCP softirq CPU per MB", "µs", |x| x.tcp_softirq_us_per_mb),
        ("TCP busy CPU per MB", "µs", |x| x.tcp_busy_us_per_mb),
    ];
    for (name, unit, f) in metrics {
        for v in VARIANTS {
            s.figure(format!("{}: {name}", v.name()), unit, &col(v, f));
        }
    }
    let added = |v: Variant, f: Field| per_round(&col(v, f), &col(Variant::None, f), |a, b| a - b);
    let softirq: Field = |x| x.udp_softirq_ns;
    let busy: Field = |x| x.udp_busy_ns;
    for &v in &VARIANTS[1..] {
        s.figure_any(
            format!("{}: added UDP softirq CPU per packet", v.name()),
            "ns",
            &added(v, softirq),
        );
        s.figure_any(
            format!("{}: added UDP busy CPU per packet", v.name()),
            "ns",
            &added(v, busy),
        );
    }
    let pps: Field = |x| x.udp_pps;
    let gbps: Field = |x| x.tcp_gbps;
    let of_none = |v: Variant, f: Field| ratio(&col(v, f), &col(Variant::None, f));
    let udp_ratio = of_none(Variant::Sonde, pps);
    let tcp_ratio = of_none(Variant::Sonde, gbps);
    for (metric, f) in [("UDP packets/s", pps), ("TCP throughput", gbps)] {
        for &v in &VARIANTS[1..] {
            s.figure(
                format!("{metric}: {} / no program", v.name()),
                "×",
                &of_none(v, f),
            );
        }
    }
    // Added CPU against the floor with the same hooks (the target), and,
    // for information, against the XDP+TC floor.
    let added_ratio = |v: Variant, floor: Variant, f: Field| ratio(&added(v, f), &added(floor, f));
    let cpu_ratio = added_ratio(Variant::Sonde, Variant::EmptyTc, softirq);
    s.figure_any(
        "UDP added softirq CPU: Sonde / empty TC+TC",
        "×",
        &cpu_ratio,
    );
    s.figure_any(
        "UDP added busy CPU: Sonde / empty TC+TC",
        "×",
        &added_ratio(Variant::Sonde, Variant::EmptyTc, busy),
    );
    s.figure_any(
        "UDP added softirq CPU: Sonde / empty XDP+TC",
        "×",
        &added_ratio(Variant::Sonde, Variant::EmptyXdp, softirq),
    );
    s.figure_any(
        "UDP added softirq CPU: Sonde, XDP ingress / empty XDP+TC",
        "×",
        &added_ratio(Variant::SondeXdp, Variant::EmptyXdp, softirq),
    );
    s.figure_any(
        "UDP added busy CPU: Sonde, XDP ingress / empty XDP+TC",
        "×",
        &added_ratio(Variant::SondeXdp, Variant::EmptyXdp, busy),
    );
    s.target(
        "UDP packets/s: Sonde / no program",
        "×",
        &udp_ratio,
        Op::AtLeast,
        0.95,
    );
    s.target(
        "TCP throughput: Sonde / no program",
        "×",
        &tcp_ratio,
        Op::AtLeast,
        0.95,
    );
    // The target divides by the empty pair's added softirq CPU, which can
    // sit within the tick-sampled noise of no program (even below it): a
    // ratio to that says nothing, so it is judged only when the floor is
    // clearly above zero.
    let floor = Summary::of(&added(Variant::EmptyTc, softirq));
    let cpu_target = "UDP added softirq CPU per packet: Sonde / empty TC+TC";
    if floor.n >= FLOOR_MIN_ROUNDS && floor.median > FLOOR_MIN_NS && floor.min > 0.0 {
        s.target(cpu_target, "×", &cpu_ratio, Op::AtMost, 1.15);
    } else {
        println!("{cpu_target}: not judged (empty TC+TC floor within noise)");
        s.note(format!(
            "Target \"{cpu_target} ≤ 1.15\" not judged: the empty TC+TC pair adds {} ns of \
             softirq CPU per packet over no program ({}), not clearly above the noise of \
             tick-sampled softirq time (it is judged only when that is above zero in every one \
             of at least {FLOOR_MIN_ROUNDS} rounds and its median above {FLOOR_MIN_NS:.0} ns), \
             so the ratio ({:.2}×, in the table for information) cannot be judged from softirq \
             time. The programs' own kernel time per run is in the bpf_stats figures.",
            num(floor.median),
            if floor.n > 1 {
                format!(
                    "{}–{} over {} rounds",
                    num(floor.min),
                    num(floor.max),
                    floor.n
                )
            } else {
                format!("{} round", floor.n)
            },
            median(&cpu_ratio),
        ));
    }
    let sonde_vs_empty = ratio(&col(Variant::Sonde, pps), &col(Variant::EmptyTc, pps));
    s.note(format!(
        "Attach mode on {}: {}. The empty TC+TC pair alone moves {:.2}× the \
         no-program UDP packets/s and {:.2}× its TCP throughput (the empty XDP+TC pair: {:.2}× \
         and {:.2}×); Sonde moves {:.2}× the empty TC+TC pair's packets/s. With XDP on ingress \
         instead of TC, Sonde moves {:.2}× (UDP) and {:.2}× (TCP) of no program.",
        net().host_if,
        links.join(", "),
        median(&of_none(Variant::EmptyTc, pps)),
        median(&of_none(Variant::EmptyTc, gbps)),
        median(&of_none(Variant::EmptyXdp, pps)),
        median(&of_none(Variant::EmptyXdp, gbps)),
        median(&sonde_vs_empty),
        median(&of_none(Variant::SondeXdp, pps)),
        median(&of_none(Variant::SondeXdp, gbps)),
    ));

    // Kernel-side cost per program run, from bpf_stats.
    let stats_rounds = ctx.pick(7, 2);
    let stats_secs = ctx.pick(2, 1);
    let (per_prog, per_packet) = bpf_stats_pass(ctx, stats_rounds, stats_secs)?;
    added_kernel_ns(s, &per_packet);
    for (v, progs) in STATS_VARIANTS.iter().zip(&per_prog) {
        for (name, ns) in progs {
            let figure = format!("bpf_stats: {}: {name} ns per run", v.name());
            // A program that did not run in some window (an egress program
            // with nothing sent back) has NaN there.
            if ns.iter().all(|x| x.is_finite()) {
                s.figure(figure, "ns", ns);
            } else {
                s.figure_any(figure, "ns", ns);
            }
        }
    }
    let prog = |v: Variant, name: &str| -> Vec<f64> {
        STATS_VARIANTS
            .iter()
            .position(|&x| x == v)
            .and_then(|i| per_prog[i].get(name).cloned())
            .unwrap_or_default()
    };
    let mut ingress = Vec::new();
    for (label, sonde, empty) in [
        (
            "TC ingress",
            prog(Variant::Sonde, "sonde_tc_ingress"),
            prog(Variant::EmptyTc, "baseline_tc"),
        ),
        (
            "XDP ingress",
            prog(Variant::SondeXdp, "sonde_xdp_ingress"),
            prog(Variant::EmptyXdp, "baseline_xdp"),
        ),
    ] {
        if sonde.is_empty() || empty.is_empty() {
            continue;
        }
        s.figure_any(
            format!("bpf_stats: Sonde {label} / empty {label} ns per run"),
            "×",
            &ratio(&sonde, &empty),
        );
        let (sonde, empty) = (median(&sonde), median(&empty));
        ingress.push(format!(
            "on {label} Sonde's program takes {sonde:.0} ns per run and the empty one \
             {empty:.0} ns, so Sonde's program body does {:.0} ns of work per packet",
            sonde - empty
        ));
    }
    if !ingress.is_empty() {
        s.note(format!(
            "In the kernel (bpf_stats, which adds its own clock reads to every run: the \
             differences cancel them, the ratios are pulled towards 1): {}. `baseline_tc` is one \
             program on both TC hooks of the empty pairs, so its figure covers both directions \
             (an empty program costs the same either way); the UDP flood sends almost nothing \
             back, so egress programs run rarely if at all (no figure when they did not run).",
            ingress.join("; ")
        ));
    }
    s.raw = serde_json::json!({
        "seconds_per_window": secs,
        "udp_datagram_bytes": DATAGRAM,
        "attach_modes": links,
        "bpf_stats_rounds": stats_rounds,
        "bpf_stats_seconds_per_window": stats_secs,
    });
    Ok(())
}

/// The packet-path programs of Sonde and of the empty pairs: their time
/// per packet is the packet path's kernel cost.
const PACKET_PROGRAMS: [&str; 5] = [
    "sonde_tc_ingress",
    "sonde_tc_egress",
    "sonde_xdp_ingress",
    "baseline_tc",
    "baseline_xdp",
];

/// The primary packet-path figure: kernel ns per packet Sonde adds over the
/// empty programs on the same hooks, per round, with its spread next to
/// its margin.
fn added_kernel_ns(s: &mut Scenario, per_packet: &[Vec<f64>]) {
    let col = |v: Variant| -> &[f64] {
        STATS_VARIANTS
            .iter()
            .position(|&x| x == v)
            .map_or(&[], |i| &per_packet[i])
    };
    for (i, v) in STATS_VARIANTS.iter().enumerate() {
        s.figure(
            format!(
                "bpf_stats: {}: packet programs' kernel ns per packet",
                v.name()
            ),
            "ns",
            &per_packet[i],
        );
    }
    let mut lines = Vec::new();
    for (label, sonde, empty) in [
        (
            "TC ingress (Sonde's default on a veth)",
            Variant::Sonde,
            Variant::EmptyTc,
        ),
        ("XDP ingress", Variant::SondeXdp, Variant::EmptyXdp),
    ] {
        let added = per_round(col(sonde), col(empty), |a, b| a - b);
        s.figure_any(
            format!(
                "bpf_stats: {} over {}: added kernel ns per packet",
                sonde.name(),
                empty.name()
            ),
            "ns",
            &added,
        );
        s.figure_any(
            format!(
                "bpf_stats: {} / {} kernel ns per packet",
                sonde.name(),
                empty.name()
            ),
            "×",
            &ratio(col(sonde), col(empty)),
        );
        let a = Summary::of(&added);
        let spread = a.max - a.min;
        lines.push(format!(
            "{label}: Sonde adds {} ns per packet over the empty programs (median of {} \
             interleaved rounds; rounds {}–{}, a spread of {} ns, {} the margin); Sonde's \
             packet programs take {} ns per packet, the empty ones {} ns",
            num(a.median),
            a.n,
            num(a.min),
            num(a.max),
            num(spread),
            if spread < a.median.abs() {
                "narrower than"
            } else {
                "not narrower than"
            },
            num(median(col(sonde))),
            num(median(col(empty))),
        ));
    }
    s.note(format!(
        "Primary packet-path figure, in the kernel (bpf_stats: run_time_ns of the packet \
         programs, TC or XDP ingress and TC egress, over the host end's rx_packets in the same \
         window): {}. bpf_stats adds its own clock reads to every run, the same for both, so \
         the difference cancels them. The throughput ratios above are secondary: on 2 shared \
         cores their spread is wider than the effect.",
        lines.join("; ")
    ));
}

/// ns per run of every program of each of [`STATS_VARIANTS`] (in that
/// order), with bpf_stats on, over UDP flood windows; by program name, one
/// sample a round (NaN in a round the program did not run). Keyed by
/// variant first, as variants share program names. Also, per variant and
/// round, the packet programs' ns per packet received.
#[allow(clippy::type_complexity)]
fn bpf_stats_pass(
    ctx: &Ctx,
    rounds: usize,
    secs: u64,
) -> anyhow::Result<(Vec<BTreeMap<String, Vec<f64>>>, Vec<Vec<f64>>)> {
    let _stats = kernel::BpfStats::enable()?;
    let samples = round_robin(
        rounds,
        &STATS_VARIANTS,
        |_| Ok(()),
        |&v| {
            let existing: Vec<u64> = kernel::progs()?.iter().map(|p| p.id).collect();
            let _running = v.start(&ctx.bins)?;
            let ours = |all: Vec<kernel::Prog>| -> Vec<kernel::Prog> {
                all.into_iter()
                    .filter(|p| !existing.contains(&p.id))
                    .collect()
            };
            let rx = try_iface_stat(net().host_if, "rx_packets")?;
            let before = ours(kernel::progs()?);
            udp(ctx, secs)?;
            let after = ours(kernel::progs()?);
            let rx = try_iface_stat(net().host_if, "rx_packets")?.saturating_sub(rx);
            let runs = kernel::ns_per_run(&before, &after);
            for (name, ns) in &runs {
                println!("bpf_stats {:<18} {name:<18} {ns:8.1} ns/run", v.name());
            }
            let packet_ns: u64 = after
                .iter()
                .filter(|a| PACKET_PROGRAMS.contains(&a.name.as_str()))
                .filter_map(|a| {
                    let b = before.iter().find(|b| b.id == a.id)?;
                    a.run_time_ns.checked_sub(b.run_time_ns)
                })
                .sum();
            let per_packet = if rx > 0 {
                packet_ns as f64 / rx as f64
            } else {
                f64::NAN
            };
            println!(
                "bpf_stats {:<18} packet programs {per_packet:8.1} ns/packet",
                v.name()
            );
            Ok((runs, per_packet))
        },
    )?;
    let per_packet = samples
        .iter()
        .map(|variant| variant.iter().map(|(_, p)| *p).collect())
        .collect();
    let per_prog = samples
        .into_iter()
        .map(|variant| {
            variant
                .into_iter()
                .map(|(runs, _)| runs)
                .collect::<Vec<_>>()
        })
        .map(|variant| {
            let mut by_name: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for (round, runs) in variant.into_iter().enumerate() {
                for (name, ns) in runs {
                    by_name
                        .entry(name)
                        .or_insert_with(|| vec![f64::NAN; rounds])[round] = ns;
                }
            }
            by_name
        })
        .collect();
    Ok((per_prog, per_packet))
}

/// One UDP flood window; fills in the UDP fields.
fn udp(ctx: &Ctx, secs: u64) -> anyhow::Result<Sample> {
    let to = format!("{}:{UDP_PORT}", net().host_ip);
    let mut sink = spawn_workload(
        &ctx.bins,
        None,
        &[0],
        &["udp-sink", &to, &(secs + 30).to_string()],
    )?;
    sink.wait_line("ready", Duration::from_secs(5))?;
    let w = Window::open()?;
    bins::workload(
        &ctx.bins,
        Some(net().netns),
        &[1],
        &["udp-flood", &to, &secs.to_string(), DATAGRAM],
        Duration::from_secs(secs + 30),
    )?;
    let (dt, packets, _, cpu) = w.close()?;
    drop(sink);
    Ok(Sample {
        udp_pps: packets / dt,
        udp_softirq_ns: cpu.softirq * 1e9 / packets,
        udp_busy_ns: cpu.busy * 1e9 / packets,
        ..Sample::default()
    })
}

/// One iperf3 TCP window; fills in the TCP fields.
fn tcp(secs: u64) -> anyhow::Result<Sample> {
    let mut server = command(None, "iperf3");
    server.args([
        "-s",
        "-1",
        "--forceflush",
        "-B",
        net().host_ip,
        "-p",
        &TCP_PORT.to_string(),
    ]);
    let mut server = Proc::spawn_on("iperf3-server", server, &[0])?;
    server.wait_line("listening", Duration::from_secs(5))?;
    let w = Window::open()?;
    let mut client = command(Some(net().netns), "iperf3");
    client.args([
        "-c",
        net().host_ip,
        "-p",
        &TCP_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    Proc::spawn_on("iperf3-client", client, &[1])?.finish(Duration::from_secs(secs + 30))?;
    let (dt, _, bytes, cpu) = w.close()?;
    drop(server);
    let mb = bytes / 1e6;
    Ok(Sample {
        tcp_gbps: bytes * 8.0 / dt / 1e9,
        tcp_softirq_us_per_mb: cpu.softirq * 1e6 / mb,
        tcp_busy_us_per_mb: cpu.busy * 1e6 / mb,
        ..Sample::default()
    })
}

/// Counters at the start of a measurement window.
struct Window {
    t: Instant,
    packets: u64,
    bytes: u64,
    cpu: CpuTimes,
}

impl Window {
    fn open() -> anyhow::Result<Window> {
        Ok(Window {
            t: Instant::now(),
            packets: try_iface_stat(net().host_if, "rx_packets")?,
            bytes: try_iface_stat(net().host_if, "rx_bytes")?,
            cpu: CpuTimes::now()?,
        })
    }

    /// (seconds, packets, bytes, CPU time) since `open`.
    fn close(self) -> anyhow::Result<(f64, f64, f64, CpuTimes)> {
        let packets = try_iface_stat(net().host_if, "rx_packets")? - self.packets;
        let bytes = try_iface_stat(net().host_if, "rx_bytes")? - self.bytes;
        let cpu = CpuTimes::now()?.since(&self.cpu);
        if packets == 0 {
            anyhow::bail!("no packets arrived on {}", net().host_if);
        }
        Ok((
            self.t.elapsed().as_secs_f64(),
            packets as f64,
            bytes as f64,
            cpu,
        ))
    }
}
