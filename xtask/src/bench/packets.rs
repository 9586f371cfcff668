//! Scenario 2: the packet path through the host end of a veth pair, with
//! no program, with empty XDP + TC programs, and with Sonde.

use std::time::{Duration, Instant};

use super::{
    Ctx, Def,
    harness::{
        Agent, BenchNet, Proc,
        agent::{self, Running, spawn_workload},
        kernel::CpuTimes,
        net::{HOST_IF, HOST_IP, NETNS, iface_stat},
        process::command,
        stats::{median, per_round, ratio, round_robin},
    },
    report::{Op, Scenario},
};

pub const DEF: Def = Def {
    id: "packets",
    title: "Packet path",
    about: "Traffic from a network namespace into the root namespace over a veth pair; the \
            programs sit on the host end. UDP: `sonde-workload udp-flood` (64-byte datagrams, \
            `sendmmsg` 64 at a time, pinned to CPU 1) into a socket on the host (pinned to CPU \
            0). TCP: one iperf3 stream, namespace to host. Variants: no program; an empty \
            XDP_PASS ingress + empty TC egress program (`sonde baseline packets`); Sonde with \
            packet accounting and the flow table (`[syscalls] enabled = false`), with its default \
            XDP ingress and, for comparison, with `xdp_mode = \"off\"` (TC on ingress too). Packets/s is \
            the host end's rx_packets delta over the window. CPU per packet is the machine's \
            softirq time (the `softirq` column of /proc/stat, tick-sampled on this kernel) \
            delta over the packets; *busy* is all non-idle CPU time (both CPUs, sender \
            included). *Added* is above no program in the same round.",
    run,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    None,
    Empty,
    Sonde,
    /// Sonde with `xdp_mode = "off"`: TC on ingress too, no XDP.
    SondeTc,
}

const VARIANTS: [Variant; 4] = [
    Variant::None,
    Variant::Empty,
    Variant::Sonde,
    Variant::SondeTc,
];
const UDP_PORT: u16 = 40_000;
const TCP_PORT: u16 = 40_001;
const DATAGRAM: &str = "64";

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "no program",
            Variant::Empty => "empty XDP+TC",
            Variant::Sonde => "Sonde",
            Variant::SondeTc => "Sonde, TC ingress",
        }
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
            let _running = match v {
                Variant::None => Running::Nothing,
                Variant::Empty => Running::Proc(agent::baseline(
                    &ctx.bins,
                    &["packets", "--interface", HOST_IF],
                )?),
                Variant::Sonde => Running::Agent(Agent::start(
                    &ctx.bins,
                    "[syscalls]\nenabled = false\n",
                    &[HOST_IF],
                )?),
                Variant::SondeTc => Running::Agent(Agent::start(
                    &ctx.bins,
                    "[syscalls]\nenabled = false\n[network]\nxdp_mode = \"off\"\n",
                    &[HOST_IF],
                )?),
            };
            if links.len() < VARIANTS.len() {
                let link = BenchNet::host_link();
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
                "{:<12} UDP {:>10.0} pkt/s {:6.0} ns softirq/pkt | TCP {:6.2} Gbit/s",
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
    let softirq = |x: &Sample| x.udp_softirq_ns;
    let busy = |x: &Sample| x.udp_busy_ns;
    for v in [Variant::Empty, Variant::Sonde, Variant::SondeTc] {
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
    let pps = |x: &Sample| x.udp_pps;
    let gbps = |x: &Sample| x.tcp_gbps;
    let udp_ratio = ratio(&col(Variant::Sonde, pps), &col(Variant::None, pps));
    let tcp_ratio = ratio(&col(Variant::Sonde, gbps), &col(Variant::None, gbps));
    let empty_ratio = ratio(&col(Variant::Empty, pps), &col(Variant::None, pps));
    let tc_ratio = ratio(&col(Variant::SondeTc, pps), &col(Variant::None, pps));
    let tc_tcp_ratio = ratio(&col(Variant::SondeTc, gbps), &col(Variant::None, gbps));
    let cpu_ratio = ratio(
        &added(Variant::Sonde, softirq),
        &added(Variant::Empty, softirq),
    );
    let busy_ratio = ratio(&added(Variant::Sonde, busy), &added(Variant::Empty, busy));
    s.figure("UDP packets/s: Sonde / no program", "×", &udp_ratio);
    s.figure(
        "UDP packets/s: empty XDP+TC / no program",
        "×",
        &empty_ratio,
    );
    s.figure(
        "UDP packets/s: Sonde, TC ingress / no program",
        "×",
        &tc_ratio,
    );
    s.figure("TCP throughput: Sonde / no program", "×", &tcp_ratio);
    s.figure(
        "TCP throughput: Sonde, TC ingress / no program",
        "×",
        &tc_tcp_ratio,
    );
    s.figure_any(
        "UDP added softirq CPU: Sonde / empty XDP+TC",
        "×",
        &cpu_ratio,
    );
    s.figure_any("UDP added busy CPU: Sonde / empty XDP+TC", "×", &busy_ratio);
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
    s.target(
        "UDP added softirq CPU per packet: Sonde / empty XDP+TC",
        "×",
        &cpu_ratio,
        Op::AtMost,
        1.15,
    );
    let empty_tcp = ratio(&col(Variant::Empty, gbps), &col(Variant::None, gbps));
    let sonde_vs_empty = ratio(&col(Variant::Sonde, pps), &col(Variant::Empty, pps));
    s.note(format!(
        "Attach mode on {HOST_IF}: {}. The empty XDP+TC pair alone moves {:.2}× the \
         no-program UDP packets/s and {:.2}× its TCP throughput; Sonde moves {:.2}× the empty \
         pair's packets/s. With TC on ingress instead of XDP, Sonde moves {:.2}× (UDP) and \
         {:.2}× (TCP) of no program.",
        links.join(", "),
        median(&empty_ratio),
        median(&empty_tcp),
        median(&sonde_vs_empty),
        median(&tc_ratio),
        median(&tc_tcp_ratio),
    ));
    s.raw = serde_json::json!({
        "seconds_per_window": secs,
        "udp_datagram_bytes": DATAGRAM,
        "attach_modes": links,
    });
    Ok(())
}

/// One UDP flood window; fills in the UDP fields.
fn udp(ctx: &Ctx, secs: u64) -> anyhow::Result<Sample> {
    let to = format!("{HOST_IP}:{UDP_PORT}");
    let mut sink = spawn_workload(
        &ctx.bins,
        None,
        &[0],
        &["udp-sink", &to, &(secs + 30).to_string()],
    )?;
    sink.wait_line("ready", Duration::from_secs(5))?;
    let w = Window::open()?;
    agent::workload(
        &ctx.bins,
        Some(NETNS),
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
        HOST_IP,
        "-p",
        &TCP_PORT.to_string(),
    ]);
    let mut server = Proc::spawn_on("iperf3-server", server, &[0])?;
    server.wait_line("listening", Duration::from_secs(5))?;
    let w = Window::open()?;
    let mut client = command(Some(NETNS), "iperf3");
    client.args([
        "-c",
        HOST_IP,
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
            packets: iface_stat(HOST_IF, "rx_packets")?,
            bytes: iface_stat(HOST_IF, "rx_bytes")?,
            cpu: CpuTimes::now()?,
        })
    }

    /// (seconds, packets, bytes, CPU time) since `open`.
    fn close(self) -> anyhow::Result<(f64, f64, f64, CpuTimes)> {
        let packets = iface_stat(HOST_IF, "rx_packets")? - self.packets;
        let bytes = iface_stat(HOST_IF, "rx_bytes")? - self.bytes;
        let cpu = CpuTimes::now()?.since(&self.cpu);
        if packets == 0 {
            anyhow::bail!("no packets arrived on {HOST_IF}");
        }
        Ok((
            self.t.elapsed().as_secs_f64(),
            packets as f64,
            bytes as f64,
            cpu,
        ))
    }
}
