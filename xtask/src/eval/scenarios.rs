//! What the evaluation runs: the normal load (a keep-alive HTTP service
//! under wrk, an iperf3 stream between the namespaces, a compiler-like
//! syscall mix) and the incidents, each made by the tool an SRE would
//! recognise, bounded in count and time, and undone when it ends (qdiscs
//! and iptables rules included). Traffic only crosses the evaluation's own
//! veth pair.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sonde_tests::{block::SlowDevice, cgroup::TestCgroup, process::command, sys::output};

use crate::bench::common::{Bins, EVAL, Proc, net};

/// The HTTP service (in the namespace) and the host's listener that the
/// floods and connection storms aim at.
pub const HTTP_PORT: u16 = 8080;
pub const IPERF_PORT: u16 = 5201;
pub const LISTEN_PORT: u16 = 9000;

/// The normal load, stopped on drop.
pub struct NormalLoad {
    _procs: Vec<Proc>,
}

impl NormalLoad {
    /// Starts every piece of the normal load for up to `seconds`.
    pub fn start(bins: &Bins, seconds: u64) -> anyhow::Result<NormalLoad> {
        let secs = seconds.to_string();
        let mut procs = Vec::new();
        // A service answering after 2 ms, under 4 wrk connections: about
        // 2,000 requests/s over the veth pair.
        let mut cmd = command(Some(net().netns), &bins.workload);
        cmd.args(["http-serve", &format!("0.0.0.0:{HTTP_PORT}"), &secs, "2000"]);
        let mut server = Proc::spawn("http-serve", cmd)?;
        server.wait_line("ready", Duration::from_secs(10))?;
        procs.push(server);
        let mut cmd = command(Some(net().netns), "iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()]);
        procs.push(Proc::spawn("iperf3-server", cmd)?);
        // The host's listener the floods and storms aim at.
        let mut cmd = command(None, &bins.workload);
        cmd.args([
            "tcp-listen",
            &format!("{}:{LISTEN_PORT}", net().host_ip),
            &secs,
        ]);
        let mut listener = Proc::spawn("tcp-listen", cmd)?;
        listener.wait_line("ready", Duration::from_secs(10))?;
        procs.push(listener);
        std::thread::sleep(Duration::from_millis(300));
        let mut cmd = command(None, "wrk");
        cmd.args([
            "-t1",
            "-c4",
            "-d",
            &format!("{secs}s"),
            &format!("http://{}:{HTTP_PORT}/", net().peer_ip),
        ]);
        procs.push(Proc::spawn("wrk", cmd)?);
        // A steady 20 Mbit/s stream, host to namespace.
        let mut cmd = command(None, "iperf3");
        cmd.args([
            "-c",
            net().peer_ip,
            "-p",
            &IPERF_PORT.to_string(),
            "-b",
            "20M",
            "-t",
            &secs,
        ]);
        procs.push(Proc::spawn("iperf3-client", cmd)?);
        let mut cmd = command(None, &bins.workload);
        cmd.args(["mix", &secs]);
        procs.push(Proc::spawn("mix", cmd)?);
        Ok(NormalLoad { _procs: procs })
    }
}

/// One injected incident: the kind a correct detector names it, and how
/// to make it for `d`.
pub struct Incident {
    pub id: &'static str,
    pub kind: &'static str,
    /// The tool and the dose, for the report.
    pub how: &'static str,
    /// What the anomaly's subject must contain, when the evidence can
    /// name a culprit (the source peer, the parent process).
    pub subject: Option<&'static str>,
    /// Written before any tuning and never tuned on: scored apart, so the
    /// report shows how detection does on incidents it was not fitted to.
    pub held_out: bool,
    /// Further faults made at the same time, as (kind, culprit): each is
    /// scored on its own in the same window.
    pub also: &'static [(&'static str, Option<&'static str>)],
    pub run: fn(&Bins, Duration) -> anyhow::Result<()>,
}

pub const INCIDENTS: &[Incident] = &[
    Incident {
        id: "syscall-storm",
        kind: "syscall_storm",
        how: "stress-ng --get 1 (get* syscalls as fast as one worker goes)",
        subject: Some("stress-ng"),
        held_out: false,
        also: &[],
        run: |_, d| run_for(command(None, "stress-ng").args(stress("get", "1", d)), d),
    },
    Incident {
        id: "syscall-errors",
        kind: "syscall_error_spike",
        how: "close(-1) in a loop (sonde-workload close-bad), EBADF each",
        subject: Some("sonde-workload"),
        held_out: false,
        also: &[],
        run: |bins, d| {
            run_for(
                command(None, &bins.workload).args(["close-bad", "100000000"]),
                d,
            )
        },
    },
    Incident {
        id: "fork-storm",
        kind: "fork_storm",
        how: "stress-ng --fork 1 (fork and exit as fast as one worker goes)",
        subject: Some("stress-ng"),
        held_out: false,
        also: &[],
        run: |_, d| run_for(command(None, "stress-ng").args(stress("fork", "1", d)), d),
    },
    Incident {
        id: "syn-flood",
        kind: "syn_flood",
        how: "hping3 -S at ~3,300 SYN/s from the peer to a listening port",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| {
            let count = (3_300.0 * d.as_secs_f64()) as u64;
            run_for(
                command(Some(net().netns), "hping3").args([
                    "-q",
                    "-S",
                    "-p",
                    &LISTEN_PORT.to_string(),
                    "-i",
                    "u300",
                    "-c",
                    &count.to_string(),
                    net().host_ip,
                ]),
                d,
            )
        },
    },
    Incident {
        id: "port-scan",
        kind: "port_scan",
        how: "nmap -sS -T4 -p 1-3000 from the peer",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| {
            run_for(
                command(Some(net().netns), "nmap").args([
                    "-sS",
                    "-T4",
                    "-n",
                    "-Pn",
                    "-p",
                    "1-3000",
                    net().host_ip,
                ]),
                d,
            )
        },
    },
    Incident {
        id: "connection-storm",
        kind: "connection_storm",
        how: "2,000 TCP connects/s from the peer to a listener (sonde-workload connect-rate)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |bins, d| connect_rate(bins, 2000, d),
    },
    Incident {
        id: "latency",
        kind: "latency_regression",
        how: "tc tbf rate 5mbit latency 300ms on the host's veth end (a queue the 20 Mbit/s stream fills)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| tbf_queue("5mbit", "300ms", false, d),
    },
    Incident {
        id: "packet-loss",
        kind: "packet_loss",
        how: "iptables: drop 10% of the host's TCP packets to the peer (statistic match)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| with_undo(&mut loss_rule("-I", "0.1"), loss_rule("-D", "0.1"), d),
    },
    Incident {
        id: "drop-rule",
        kind: "packet_loss",
        how: "~1,000 UDP datagrams/s from the peer to a port behind an iptables DROP rule on the host's veth end",
        subject: Some("netfilter_drop"),
        held_out: false,
        also: &[],
        run: |_, d| into_drop_rule("u1000", 1_000, d),
    },
    Incident {
        id: "drop-rule-low",
        kind: "packet_loss",
        how: "~100 UDP datagrams/s into the same DROP rule (near the 20/s floor)",
        subject: Some("netfilter_drop"),
        held_out: false,
        also: &[],
        run: |_, d| into_drop_rule("u10000", 100, d),
    },
    Incident {
        id: "cpu-saturation",
        kind: "cpu_saturation",
        how: "stress-ng --cpu 8 (four runnable tasks per core) in a cgroup of its own",
        subject: Some(CPU_CGROUP),
        held_out: false,
        also: &[],
        run: |_, d| cpu_hogs("8", d),
    },
    Incident {
        id: "udp-flood",
        kind: "udp_flood",
        how: "hping3 --udp --faster from the peer to a closed port (blatant)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| hping3(&["--udp", "-p", "20300", "--faster"], 200_000, d),
    },
    Incident {
        id: "udp-flood-low",
        kind: "udp_flood",
        how: "hping3 --udp at ~2,500 packets/s from the peer (near the 2,000/s floor)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| hping3(&["--udp", "-p", "20300", "-i", "u400"], rate(2_500, d), d),
    },
    Incident {
        id: "icmp-flood",
        kind: "icmp_flood",
        how: "hping3 --icmp --faster (echo requests) from the peer (blatant)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| hping3(&["--icmp", "--faster"], 200_000, d),
    },
    Incident {
        id: "icmp-flood-low",
        kind: "icmp_flood",
        how: "hping3 --icmp at ~700 echo requests/s from the peer (near the 500/s floor)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| hping3(&["--icmp", "-i", "u1400"], rate(700, d), d),
    },
    Incident {
        id: "fragment-flood",
        kind: "fragment_flood",
        how: "hping3 --udp -d 3000 at ~5,000 datagrams/s from the peer (3 fragments each: ~15,000 fragments/s, blatant)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| {
            hping3(
                &["--udp", "-p", "20300", "-d", "3000", "-i", "u200"],
                rate(5_000, d),
                d,
            )
        },
    },
    Incident {
        id: "fragment-flood-low",
        kind: "fragment_flood",
        how: "hping3 --udp -d 3000 at ~250 datagrams/s from the peer (~750 fragments/s, near the 500/s floor)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| {
            hping3(
                &["--udp", "-p", "20300", "-d", "3000", "-i", "u4000"],
                rate(250, d),
                d,
            )
        },
    },
    Incident {
        id: "refused-closed-port",
        kind: "connection_refusals",
        how: "hping3 -S --faster from the peer to a closed port: every SYN answered with a RST",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| hping3(&["-S", "-p", "20301", "--faster"], 200_000, d),
    },
    Incident {
        id: "refused-reject-low",
        kind: "connection_refusals",
        how: "~400 SYN/s from the peer to the listener behind iptables REJECT --reject-with tcp-reset",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| {
            output(&mut reject_rule("-I")).context("inserting the REJECT rule")?;
            let _undo = Undo(reject_rule("-D"));
            hping3(
                &["-S", "-p", &LISTEN_PORT.to_string(), "-i", "u2500"],
                rate(400, d),
                d,
            )
        },
    },
    Incident {
        id: "exec-storm",
        kind: "exec_storm",
        how: "bash running /bin/true in a loop (about 1,000 short-lived processes/s)",
        subject: Some("bash"),
        held_out: false,
        also: &[],
        run: |_, d| {
            run_for(
                Command::new("bash").args(["-c", "for i in $(seq 100000); do /bin/true; done"]),
                d,
            )
        },
    },
    Incident {
        id: "exec-storm-low",
        kind: "exec_storm",
        how: "bash running /bin/true then sleep 0.004 in a loop (~300 execs/s, near the 200/s floor)",
        subject: Some("bash"),
        held_out: false,
        also: &[],
        run: |_, d| {
            run_for(
                Command::new("bash").args([
                    "-c",
                    "for i in $(seq 100000); do /bin/true; sleep 0.004; done",
                ]),
                d,
            )
        },
    },
    Incident {
        id: "disk-latency",
        kind: "io_latency_regression",
        how: "4 dd writers of 16 KiB O_DIRECT requests to a loop device whose writes wait on a 1 MiB/s blkio limit of their cgroup (about 62 ms a request)",
        subject: Some(SLOW_DISK_SUBJECT),
        held_out: false,
        also: &[],
        run: |_, d| slow_disk(1 << 20, 16 << 10, 4, d),
    },
    Incident {
        id: "disk-latency-low",
        kind: "io_latency_regression",
        how: "the same at a 2 MiB/s limit (about 31 ms a request, near the 20 ms floor)",
        subject: Some(SLOW_DISK_SUBJECT),
        held_out: false,
        also: &[],
        run: |_, d| slow_disk(2 << 20, 16 << 10, 4, d),
    },
    // A hung disk: its one request of 1 MiB may pass at 4 KiB/s (256 s),
    // so it completes nothing during the incident; the limit is lifted
    // when the incident ends (SlowDevice's drop).
    Incident {
        id: "disk-hang",
        kind: "io_stall",
        how: "one dd O_DIRECT write of 1 MiB to the slow loop device at a 4 KiB/s limit: in flight all along, nothing completes",
        subject: Some(SLOW_DISK_SUBJECT),
        held_out: false,
        also: &[],
        run: |_, d| slow_disk(4 << 10, 1 << 20, 1, d),
    },
    // Written 2026-12-07 with the io_stall kind, held out until its first
    // eval run led to a change that touches it: a disk that does
    // complete, one request every 2 s (near the 1 s floor, and too few
    // completions for a mean latency).
    Incident {
        id: "disk-hang-slow-requests",
        kind: "io_stall",
        how: "one dd writer of 64 KiB O_DIRECT requests to the slow loop device at a 32 KiB/s limit (each request 2 s in flight)",
        subject: Some(SLOW_DISK_SUBJECT),
        held_out: false,
        also: &[],
        run: |_, d| slow_disk(32 << 10, 64 << 10, 1, d),
    },
    // The held-out set (written 2026-12-05, before tuning on it): the
    // shapes above at intensities nearer the floors, and a scan of
    // another protocol. udp-scan and packet-loss-low left it after its
    // first run: their misses (no culprit for a UDP scan; this node named
    // as its own lossy peer) led to fixes, so they are tuned now.
    // cpu-saturation-low left it on 2026-12-05 (its victims, the normal
    // load in the root cgroup, were named instead of its hogs: CPU
    // contention is now named by the CPU each cgroup added), and
    // cpu-saturation-pinned took its place, written before that change.
    // latency-low left it on 2026-12-05 too (RTT 1 → 9-18 ms stayed under
    // the 20 ms floor of the RTT features, which was lowered for it), and
    // latency-return-path took its place, written before that change.
    Incident {
        id: "syn-flood-low",
        kind: "syn_flood",
        how: "hping3 -S at ~400 SYN/s from the peer to the listening port (floor 200/s)",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |_, d| {
            hping3(
                &["-S", "-p", &LISTEN_PORT.to_string(), "-i", "u2500"],
                rate(400, d),
                d,
            )
        },
    },
    Incident {
        id: "port-scan-slow",
        kind: "port_scan",
        how: "nmap -sS -T3 -p 1-400 from the peer",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |_, d| {
            run_for(
                command(Some(net().netns), "nmap").args([
                    "-sS",
                    "-T3",
                    "-n",
                    "-Pn",
                    "-p",
                    "1-400",
                    net().host_ip,
                ]),
                d,
            )
        },
    },
    Incident {
        id: "udp-scan",
        kind: "port_scan",
        how: "nmap -sU -T4 -p 1-300 from the peer (closed UDP ports)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| {
            run_for(
                command(Some(net().netns), "nmap").args([
                    "-sU",
                    "-T4",
                    "-n",
                    "-Pn",
                    "-p",
                    "1-300",
                    net().host_ip,
                ]),
                d,
            )
        },
    },
    Incident {
        id: "connection-storm-low",
        kind: "connection_storm",
        how: "400 TCP connects/s from the peer to a listener (floor 200/s)",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |bins, d| connect_rate(bins, 400, d),
    },
    Incident {
        id: "cpu-saturation-low",
        kind: "cpu_saturation",
        how: "stress-ng --cpu 3 (1.5 runnable tasks per core) in a cgroup of its own",
        subject: Some(CPU_CGROUP),
        held_out: false,
        also: &[],
        run: |_, d| cpu_hogs("3", d),
    },
    Incident {
        id: "cpu-saturation-pinned",
        kind: "cpu_saturation",
        how: "stress-ng --cpu 3 --taskset 0 (three hogs on one core, the other core free) in a cgroup of its own",
        subject: Some(PINNED_CGROUP),
        held_out: true,
        also: &[],
        run: |_, d| {
            let cgroup = TestCgroup::named(PINNED_CGROUP)?;
            let mut args = stress("cpu", "3", d);
            args.extend(["--taskset".to_owned(), "0".to_owned()]);
            run_for(&mut cgroup.command("stress-ng", &args), d)
        },
    },
    Incident {
        id: "latency-low",
        kind: "latency_regression",
        how: "tc tbf rate 12mbit latency 100ms on the host's veth end (the 20 Mbit/s stream queues)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| tbf_queue("12mbit", "100ms", false, d),
    },
    Incident {
        id: "latency-return-path",
        kind: "latency_regression",
        how: "tc tbf rate 3mbit latency 40ms on the namespace's veth end (the HTTP responses and the stream's ACKs queue)",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |_, d| tbf_queue("3mbit", "40ms", true, d),
    },
    // Written 2026-12-07 before any run of it: a return-path shaper the
    // traffic does reach. latency-return-path's 3 Mbit/s is above the
    // ~2,000 HTTP responses/s its namespace sends back, and its referee
    // is there to say so; at 256 kbit/s each response and ACK waits for
    // tokens.
    Incident {
        id: "latency-return-path-slow",
        kind: "latency_regression",
        how: "tc tbf rate 256kbit latency 100ms on the namespace's veth end (below the ~2.4 Mbit/s of HTTP responses sent back: each response and ACK waits)",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |_, d| tbf_queue("256kbit", "100ms", true, d),
    },
    // Written 2026-12-07 before any run of it, after drops by interface
    // became sampled past [drops] exact_device_drops_per_second (10,000/s
    // by default): a flood into the DROP rule well past that. Expected as
    // the tuned udp-flood, whose datagrams the kernel also drops (no
    // socket): the flood and its source, not the firewall doing its job.
    Incident {
        id: "drop-rule-flood",
        kind: "udp_flood",
        how: "hping3 --udp -i u20 from the peer into the DROP rule (tens of thousands of datagrams/s dropped: drops by interface run sampled)",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |_, d| into_drop_rule("u20", 50_000, d),
    },
    // Written 2026-12-06 with the disk kind, before any run of it: one
    // writer of large requests, where the tuned disk incidents have four
    // of small ones.
    Incident {
        id: "disk-latency-large-writes",
        kind: "io_latency_regression",
        how: "one dd writer of 512 KiB O_DIRECT requests to the slow loop device at a 4 MiB/s limit (about 125 ms a request, 8 a second)",
        subject: Some(SLOW_DISK_SUBJECT),
        held_out: true,
        also: &[],
        run: |_, d| slow_disk(4 << 20, 512 << 10, 1, d),
    },
    // Written 2026-12-07 after the io_stall kind's first eval run, before
    // the change it led to (the stall's first reading, 3 and 4 cycles to
    // detect): the hang beside a disk that is busy and completing. It
    // replaces disk-hang-slow-requests in the held-out set, which that
    // change also touches (it moved to the tuned set above).
    Incident {
        id: "disk-hang-busy-neighbour",
        kind: "io_stall",
        how: "the disk-hang write to the slow loop device while another loop device takes back-to-back 4 KiB O_DIRECT writes",
        subject: Some(SLOW_DISK_SUBJECT),
        held_out: true,
        also: &[],
        run: |_, d| hang_beside_a_busy_disk(d),
    },
    // Written 2026-12-06 before the fragment-flood kind existed (the
    // tuned fragment incidents are UDP datagrams of 3,000 bytes): echo
    // requests of 4,000 bytes, and UDP that hping3 cuts into 64-byte
    // fragments itself.
    Incident {
        id: "fragment-flood-icmp",
        kind: "fragment_flood",
        how: "hping3 --icmp -d 4000 at ~400 echo requests/s from the peer (3 fragments each, ~1,200 fragments/s)",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |_, d| hping3(&["--icmp", "-d", "4000", "-i", "u2500"], rate(400, d), d),
    },
    Incident {
        id: "fragment-flood-tiny",
        kind: "fragment_flood",
        how: "hping3 --udp -f -m 64 -d 512 at ~150 datagrams/s from the peer (9 fragments each, ~1,350 fragments/s)",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |_, d| {
            hping3(
                &[
                    "--udp", "-f", "-m", "64", "-d", "512", "-p", "20300", "-i", "u6600",
                ],
                rate(150, d),
                d,
            )
        },
    },
    // Written 2026-12-07, before any run of it: fragments that are never
    // the first of their datagram (an offset, More Fragments set, a new
    // IP id each), so nothing reassembles. They fill the reassembly
    // queues until the kernel drops them (and, 30 s on, times the queues
    // out): drops appear beside the fragments, and the kind must still
    // say who sent what.
    Incident {
        id: "fragment-flood-orphans",
        kind: "fragment_flood",
        how: "hping3 --udp -x -g 1480 -d 1000 at ~1,500 packets/s from the peer: non-first fragments only, never reassembled",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[],
        run: |_, d| {
            hping3(
                &[
                    "--udp", "-x", "-g", "1480", "-d", "1000", "-p", "20300", "-i", "u666",
                ],
                rate(1_500, d),
                d,
            )
        },
    },
    Incident {
        id: "packet-loss-low",
        kind: "packet_loss",
        how: "iptables: drop 3% of the host's TCP packets to the peer (statistic match)",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[],
        run: |_, d| with_undo(&mut loss_rule("-I", "0.03"), loss_rule("-D", "0.03"), d),
    },
    // Written 2026-12-07 before any run: two faults at once, from parts
    // that share no device, rule, qdisc or cgroup. Each fault is scored on
    // its own in the same window, so a record of the other's kind is
    // neither a hit nor a false positive for it. Held out when written;
    // syn-flood-with-cpu-saturation left the set after its first run (its
    // CPU saturation was taken as the flood's symptom, which it led to
    // change).
    Incident {
        id: "syn-flood-with-cpu-saturation",
        kind: "syn_flood",
        how: "syn-flood-low and cpu-saturation-low at once: ~400 SYN/s from the peer while stress-ng --cpu 3 runs in a cgroup of its own",
        subject: Some(EVAL.peer_ip),
        held_out: false,
        also: &[("cpu_saturation", Some(CPU_CGROUP))],
        run: |bins, d| at_once(bins, d, &["syn-flood-low", "cpu-saturation-low"]),
    },
    Incident {
        id: "udp-flood-with-disk-latency",
        kind: "udp_flood",
        how: "udp-flood-low and disk-latency at once: ~2,500 UDP packets/s from the peer while 4 writers wait on the slow loop device",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[("io_latency_regression", Some(SLOW_DISK_SUBJECT))],
        run: |bins, d| at_once(bins, d, &["udp-flood-low", "disk-latency"]),
    },
    Incident {
        id: "exec-storm-with-packet-loss",
        kind: "exec_storm",
        how: "exec-storm-low and packet-loss-low at once: ~300 execs/s from one shell while iptables drops 3% of the host's TCP packets to the peer",
        subject: Some("bash"),
        held_out: true,
        also: &[("packet_loss", Some(EVAL.peer_ip))],
        run: |bins, d| at_once(bins, d, &["exec-storm-low", "packet-loss-low"]),
    },
    // Written 2026-12-07 after the first run of the three above, in which
    // the CPU saturation beside the SYN flood was never named (a flood's
    // CPU load is taken as its symptom), and before any change for it:
    // the same shape with the other causes that absorb CPU saturation.
    Incident {
        id: "icmp-flood-with-pinned-hogs",
        kind: "icmp_flood",
        how: "icmp-flood-low and cpu-saturation-pinned at once: ~700 echo requests/s from the peer while three hogs share core 0 in a cgroup of their own",
        subject: Some(EVAL.peer_ip),
        held_out: true,
        also: &[("cpu_saturation", Some(PINNED_CGROUP))],
        run: |bins, d| at_once(bins, d, &["icmp-flood-low", "cpu-saturation-pinned"]),
    },
    Incident {
        id: "fork-storm-with-pinned-hogs",
        kind: "fork_storm",
        how: "fork-storm and cpu-saturation-pinned at once: stress-ng --fork 1 while three hogs share core 0 in a cgroup of their own",
        subject: Some("stress-ng"),
        held_out: true,
        also: &[("cpu_saturation", Some(PINNED_CGROUP))],
        run: |bins, d| at_once(bins, d, &["fork-storm", "cpu-saturation-pinned"]),
    },
];

/// The incidents `ids` made together for `d`, each on a thread of its own.
fn at_once(bins: &Bins, d: Duration, ids: &[&str]) -> anyhow::Result<()> {
    let parts = ids
        .iter()
        .map(|id| {
            INCIDENTS
                .iter()
                .find(|i| i.id == *id)
                .with_context(|| format!("no incident {id}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        let running: Vec<_> = parts
            .iter()
            .map(|part| s.spawn(move || (part.run)(bins, d).with_context(|| part.id)))
            .collect();
        running
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a part panicked")))
            })
            .collect::<anyhow::Result<Vec<()>>>()
    })?;
    Ok(())
}

/// `per_second` TCP connects from the peer to the host's listener for `d`.
fn connect_rate(bins: &Bins, per_second: u32, d: Duration) -> anyhow::Result<()> {
    run_for(
        command(Some(net().netns), &bins.workload).args([
            "connect-rate",
            &format!("{}:{LISTEN_PORT}", net().host_ip),
            &per_second.to_string(),
            &d.as_secs().max(1).to_string(),
        ]),
        d,
    )
}

/// A tbf queue of `rate` holding up to `latency` for `d` on the host's
/// veth end (the normal load's 20 Mbit/s stream fills it) or, with
/// `return_path`, on the namespace's (its HTTP responses and the stream's
/// ACKs queue there).
fn tbf_queue(rate: &str, latency: &str, return_path: bool, d: Duration) -> anyhow::Result<()> {
    let (netns, dev) = if return_path {
        (Some(net().netns), net().peer_if)
    } else {
        (None, net().host_if)
    };
    let mut del = command(netns, "tc");
    del.args(["qdisc", "del", "dev", dev, "root"]);
    with_undo(
        command(netns, "tc").args([
            "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kb", "latency",
            latency,
        ]),
        del,
        d,
    )
}

/// `count` packets/s × the incident's length.
fn rate(per_second: u64, d: Duration) -> u64 {
    (per_second as f64 * d.as_secs_f64()) as u64
}

/// hping3 from the peer to the host, at most `count` packets and `d`.
fn hping3(args: &[&str], count: u64, d: Duration) -> anyhow::Result<()> {
    let count = count.to_string();
    let mut all = vec!["-q"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", &count, net().host_ip]);
    run_for(command(Some(net().netns), "hping3").args(all), d)
}

/// The refusal incident's iptables rule, inserted (-I) or deleted (-D).
fn reject_rule(op: &str) -> Command {
    let mut c = Command::new("iptables");
    c.args([
        op,
        "INPUT",
        "-i",
        net().host_if,
        "-p",
        "tcp",
        "--dport",
        &LISTEN_PORT.to_string(),
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    c
}

/// The UDP port the drop incidents' rule drops on the host's veth end.
const DROP_PORT: &str = "20400";

/// The disk incidents' loop device, at a fixed name so that the anomaly
/// can be checked for it, and that name.
const SLOW_DISK: &str = "/dev/loop111";
const SLOW_DISK_SUBJECT: &str = "loop111";

/// `writers` writers of `block`-byte requests for `d` to a loop device
/// over a file on the disk under /var/tmp, whose writes wait on a limit of
/// `bytes_per_second` (each request about `writers` × `block` over the
/// limit).
fn slow_disk(bytes_per_second: u64, block: u64, writers: u64, d: Duration) -> anyhow::Result<()> {
    let disk = SlowDevice::try_new(
        std::path::Path::new("/var/tmp"),
        Some(SLOW_DISK),
        bytes_per_second,
    )
    .context("making the slow disk")?;
    // What the limit lets through in `d`, and a second more.
    let count = (bytes_per_second / block / writers).max(1) * (d.as_secs() + 1);
    run_for(&mut disk.writers(block, count, writers), d)
}

/// The disk-hang incident while another loop device (over a file on the
/// same disk, no limit) takes back-to-back 4 KiB O_DIRECT writes: a busy
/// disk that completes beside a hung one. Bounded: 64 passes over its
/// 16 MiB, stopped after `d`.
fn hang_beside_a_busy_disk(d: Duration) -> anyhow::Result<()> {
    let file = std::path::Path::new("/var/tmp")
        .join(format!("sonde-eval-busy-{}.img", std::process::id()));
    let busy = sonde_tests::block::LoopDevice::try_new(&file, 16 << 20, None, true)
        .context("making the busy loop device")?;
    let script = format!(
        "i=0; while [ $i -lt 64 ]; do dd if=/dev/zero of={} bs=4k count=4096 oflag=direct \
         status=none || exit 1; i=$((i + 1)); done",
        busy.device()
    );
    let mut c = Command::new("sh");
    c.args(["-c", &script]);
    let neighbour = Proc::spawn("dd (busy neighbour)", c)?;
    let hang = slow_disk(4 << 10, 1 << 20, 1, d);
    drop(neighbour);
    drop(busy);
    hang
}

/// `workers` CPU-bound stress-ng workers in the CPU incidents' cgroup.
fn cpu_hogs(workers: &str, d: Duration) -> anyhow::Result<()> {
    let cgroup = TestCgroup::named(CPU_CGROUP)?;
    run_for(
        &mut cgroup.command("stress-ng", &stress("cpu", workers, d)),
        d,
    )
}

/// `per_second` UDP datagrams from the peer, one every `interval` (hping3's
/// `-i`), into the drop rule for `d`.
fn into_drop_rule(interval: &str, per_second: u64, d: Duration) -> anyhow::Result<()> {
    output(&mut drop_rule("-I")).context("inserting the DROP rule")?;
    let _undo = Undo(drop_rule("-D"));
    hping3(
        &["--udp", "-p", DROP_PORT, "-i", interval],
        rate(per_second, d),
        d,
    )
}

/// The drop incidents' iptables rule, inserted (-I) or deleted (-D).
fn drop_rule(op: &str) -> Command {
    let mut c = Command::new("iptables");
    c.args([
        op,
        "INPUT",
        "-i",
        net().host_if,
        "-p",
        "udp",
        "--dport",
        DROP_PORT,
        "-j",
        "DROP",
    ]);
    c
}

/// The cgroup the CPU-saturation incident runs in (what its anomaly must
/// name).
const CPU_CGROUP: &str = "sonde-eval-cpu";
/// The cgroup of the incident that saturates one core only.
const PINNED_CGROUP: &str = "sonde-eval-pinned";

fn stress(stressor: &str, workers: &str, d: Duration) -> Vec<String> {
    vec![
        format!("--{stressor}"),
        workers.to_owned(),
        "--timeout".to_owned(),
        format!("{}s", d.as_secs().max(1)),
        "--quiet".to_owned(),
    ]
}

/// Runs `cmd` for at most `d` (stopped then), and at least until it ends
/// on its own if that is sooner.
fn run_for(cmd: &mut Command, d: Duration) -> anyhow::Result<()> {
    let program = std::path::Path::new(cmd.get_program());
    let name = program
        .file_name()
        .map_or("incident".into(), |n| n.to_string_lossy().into_owned());
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    let mut proc = Proc::spawn(&name, c)?;
    let deadline = Instant::now() + d;
    while Instant::now() < deadline && proc.running() {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(proc);
    Ok(())
}

/// The packet-loss incidents' iptables rule, dropping `probability` of
/// the packets, inserted (-I) or deleted (-D).
fn loss_rule(op: &str, probability: &str) -> Command {
    let mut c = Command::new("iptables");
    c.args([
        op,
        "OUTPUT",
        "-o",
        net().host_if,
        "-p",
        "tcp",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        probability,
        "-j",
        "DROP",
    ]);
    c
}

/// Removes what a killed run may have left outside the namespace (the
/// qdisc went with the veth pair; the iptables rule did not).
pub fn remove_leftovers() {
    for p in ["0.1", "0.03"] {
        while output(&mut loss_rule("-D", p)).is_ok() {}
    }
    while output(&mut reject_rule("-D")).is_ok() {}
    while output(&mut drop_rule("-D")).is_ok() {}
}

/// Runs a command when dropped: an incident is undone even when the run
/// fails half-way.
struct Undo(Command);

impl Drop for Undo {
    fn drop(&mut self) {
        if let Err(e) = output(&mut self.0) {
            eprintln!("undoing an incident failed: {e:#}");
        }
    }
}

/// Applies `on`, waits `d`, then always applies `off`.
fn with_undo(on: &mut Command, off: Command, d: Duration) -> anyhow::Result<()> {
    output(on).context("injecting the incident")?;
    let _undo = Undo(off);
    std::thread::sleep(d);
    Ok(())
}
