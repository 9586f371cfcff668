//! `sonde baseline`: the benchmark's reference points, run by
//! `cargo xtask bench` side by side with the real agent.
//!
//! - `syscalls`: empty programs on sys_enter/sys_exit (raw or classic
//!   tracepoint): what merely hooking a syscall costs on this kernel. With
//!   `--timed`, the timing floor instead: raw tracepoint programs that do
//!   only what any latency measurement must (a clock read on entry, one on
//!   exit, the difference added to a per-CPU sum).
//! - `packets`: an empty program on ingress (TC, or XDP_PASS with
//!   `--ingress xdp`) and an empty TC program on egress of the given
//!   interfaces.
//! - `hooks`: an empty classic tracepoint program and an empty raw
//!   tracepoint program (the syscall floor's, which read nothing of their
//!   context, so they attach anywhere) on the tracepoints named: the floor
//!   of a hook family, of the same kind as Sonde's programs there.
//! - `ring-reader`: Sonde's real syscall programs with every syscall made
//!   "slow", drained by the most minimal reader possible (no decoding, no
//!   bookkeeping), to compare the agent's reader against.
//!
//! Each prints `ready` on stdout once attached and runs until SIGINT or
//! SIGTERM; `ring-reader` then prints its counts as one JSON line.

use std::time::Duration;

use agent_common::events::RING_SYSCALL;
use aya::{
    EbpfLoader,
    programs::{RawTracePoint, SchedClassifier, TcAttachType, TracePoint, Xdp, XdpMode},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use super::{
    Probes,
    capabilities::Capabilities,
    loader::{EBPF_OBJECT, ProbeError, program_mut},
};
use crate::{
    cli::BaselineIngress,
    config::{Config, SyscallHook},
};

pub enum Baseline {
    Syscalls {
        hook: SyscallHook,
        /// The timing floor (clock reads) instead of empty programs.
        timed: bool,
    },
    Packets {
        interfaces: Vec<String>,
        ingress: BaselineIngress,
    },
    Hooks {
        /// (category, name) of each classic tracepoint.
        tracepoints: Vec<(String, String)>,
        raw_tracepoints: Vec<String>,
    },
    RingReader {
        ring_bytes: u32,
    },
}

pub fn run(baseline: Baseline) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        match baseline {
            Baseline::Syscalls { hook, timed } => {
                let raw = hook != SyscallHook::Tracepoint;
                if timed && !raw {
                    return Err("--timed: raw tracepoints only".to_owned());
                }
                let mut ebpf = EbpfLoader::new()
                    .load(EBPF_OBJECT)
                    .map_err(|e| e.to_string())?;
                let kind = if timed { "timed" } else { "raw" };
                for (program, tp) in [("sys_enter", "sys_enter"), ("sys_exit", "sys_exit")] {
                    if raw {
                        let name = format!("baseline_{program}_{kind}");
                        let prog: &mut RawTracePoint =
                            program_mut(&mut ebpf, &name).map_err(|e| e.to_string())?;
                        prog.load().map_err(|e| e.to_string())?;
                        prog.attach(tp).map_err(|e| e.to_string())?;
                    } else {
                        let name = format!("baseline_{program}_tp");
                        let prog: &mut TracePoint =
                            program_mut(&mut ebpf, &name).map_err(|e| e.to_string())?;
                        prog.load().map_err(|e| e.to_string())?;
                        prog.attach("raw_syscalls", tp).map_err(|e| e.to_string())?;
                    }
                }
                println!("ready");
                wait_for_signal().await;
                drop(ebpf);
                Ok(())
            }
            Baseline::Packets {
                interfaces,
                ingress,
            } => {
                let mut ebpf = EbpfLoader::new()
                    .load(EBPF_OBJECT)
                    .map_err(|e| e.to_string())?;
                if ingress == BaselineIngress::Xdp {
                    let xdp: &mut Xdp =
                        program_mut(&mut ebpf, "baseline_xdp").map_err(|e| e.to_string())?;
                    xdp.load().map_err(|e| e.to_string())?;
                    for iface in &interfaces {
                        xdp.attach(iface, XdpMode::Driver)
                            .or_else(|_| xdp.attach(iface, XdpMode::Skb))
                            .map_err(|e| format!("XDP on {iface}: {e}"))?;
                    }
                }
                // One program on both directions (tcx on kernels >= 6.6,
                // as Sonde attaches).
                let tc: &mut SchedClassifier =
                    program_mut(&mut ebpf, "baseline_tc").map_err(|e| e.to_string())?;
                tc.load().map_err(|e| e.to_string())?;
                let mut directions = vec![TcAttachType::Egress];
                if ingress == BaselineIngress::Tc {
                    directions.push(TcAttachType::Ingress);
                }
                for iface in &interfaces {
                    for &direction in &directions {
                        tc.attach(iface, direction)
                            .map_err(|e| format!("TC {direction:?} on {iface}: {e}"))?;
                    }
                }
                println!("ready");
                wait_for_signal().await;
                drop(ebpf);
                Ok(())
            }
            Baseline::Hooks {
                tracepoints,
                raw_tracepoints,
            } => {
                let mut ebpf = EbpfLoader::new()
                    .load(EBPF_OBJECT)
                    .map_err(|e| e.to_string())?;
                if !tracepoints.is_empty() {
                    let prog: &mut TracePoint = program_mut(&mut ebpf, "baseline_sys_enter_tp")
                        .map_err(|e| e.to_string())?;
                    prog.load().map_err(|e| e.to_string())?;
                    for (category, name) in &tracepoints {
                        prog.attach(category, name)
                            .map_err(|e| format!("tracepoint {category}:{name}: {e}"))?;
                    }
                }
                if !raw_tracepoints.is_empty() {
                    let prog: &mut RawTracePoint = program_mut(&mut ebpf, "baseline_sys_enter_raw")
                        .map_err(|e| e.to_string())?;
                    prog.load().map_err(|e| e.to_string())?;
                    for name in &raw_tracepoints {
                        prog.attach(name)
                            .map_err(|e| format!("raw tracepoint {name}: {e}"))?;
                    }
                }
                println!("ready");
                wait_for_signal().await;
                drop(ebpf);
                Ok(())
            }
            Baseline::RingReader { ring_bytes } => ring_reader(ring_bytes).await,
        }
    })
}

async fn ring_reader(ring_bytes: u32) -> Result<(), String> {
    let mut config = Config::default();
    config.network.enabled = false;
    config.syscalls.slow_threshold_ms = 1e-6; // 1 ns: every syscall is "slow"
    config.syscalls.slow_ignore.clear();
    config.events.syscall_ring_bytes = ring_bytes;
    // The minimal reader reads a BPF ring buffer.
    config.events.transport = crate::config::EventTransport::RingBuffer;
    config.validate().map_err(|e| e.to_string())?;
    let caps = Capabilities::detect();
    let mut probes =
        Probes::load(&config, &[], &caps, false).map_err(|e: ProbeError| e.to_string())?;
    let (_, _, ring) = probes
        .rings
        .iter()
        .position(|(id, _, _)| *id == RING_SYSCALL)
        .map(|i| probes.rings.swap_remove(i))
        .ok_or("no syscall ring")?;
    let crate::events::EventSource::Ring(ring) = ring else {
        return Err("the syscall ring is not a BPF ring buffer".into());
    };
    // SAFETY: the RingBuf owns its fd for as long as the AsyncFd lives.
    let mut fd =
        unsafe { AsyncFd::register(ring) }.map_err(|e| std::io::Error::from(e).to_string())?;
    println!("ready");
    let mut received: u64 = 0;
    let mut stop = Box::pin(wait_for_signal());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(|e| e.to_string())?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    received += 1;
                    drop(item);
                }
                guard.clear_ready();
            }
        }
    }
    // Stop producing, then drain what is left, so the counts settle.
    let maps = probes.maps.take().ok_or("maps taken")?;
    drop(probes);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ring = fd.get_mut();
    while ring.next().is_some() {
        received += 1;
    }
    let stats = maps
        .ring_stats
        .get(&RING_SYSCALL, 0)
        .map_err(|e| e.to_string())?;
    let produced: u64 = stats.iter().map(|s| s.produced).sum();
    let lost: u64 = stats.iter().map(|s| s.lost).sum();
    println!(r#"{{"received":{received},"produced":{produced},"lost":{lost}}}"#);
    Ok(())
}

async fn wait_for_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
