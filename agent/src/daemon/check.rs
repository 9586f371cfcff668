//! `sonde check` (what this kernel and process can do, then load, attach
//! and detach everything) and `sonde baseline` (benchmark reference
//! points).

use std::collections::BTreeMap;

use super::{
    failure::Failure,
    setup::{init_logging, load_config},
};
use crate::{
    cli::{BaselineCommand, CommonArgs},
    config::SyscallHook,
    netif,
    probes::{self, ProbeError, Probes, baseline::Baseline, capabilities::Capabilities},
};

/// `sonde check`: report capabilities, then load and attach everything the
/// config asks for and detach again. Non-zero when the agent cannot run.
pub fn check(args: CommonArgs) -> Result<(), Failure> {
    let mut config = load_config(&args)?;
    // Fallbacks and their reasons are logged as warnings: show them.
    config.log_level = "warn".into();
    init_logging(&config);
    let caps = Capabilities::detect();
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("kernel            {}", caps.kernel_release);
    println!("BTF               {}", yes(caps.btf));
    println!("raw tracepoints   {}", yes(caps.raw_tracepoint));
    println!("tracepoints       {}", yes(caps.tracepoint));
    println!("kprobes           {}", yes(caps.kprobes));
    println!("fentry/fexit      {}", yes(caps.fentry));
    println!("XDP               {}", yes(caps.xdp));
    println!("TC (sched_cls)    {}", yes(caps.tc));
    println!("BPF ring buffer   {}", yes(caps.ringbuf_map));
    println!("tracefs mounted   {}", yes(caps.tracefs_mounted));
    println!(
        "bpffs mounted     {} (not needed: Sonde pins nothing)",
        yes(caps.bpffs_mounted)
    );
    println!(
        "bpf_stats         {}",
        if caps.bpf_stats_enabled { "on" } else { "off" }
    );
    if caps.missing_caps.is_empty() {
        println!("privileges        ok");
    } else {
        println!("privileges        missing {}", caps.missing_caps.join(", "));
        return Err(Failure::runtime(ProbeError::Privileges(
            caps.missing_caps.clone(),
        )));
    }
    let interfaces = if config.network.enabled {
        netif::resolve(&config.network.interfaces).map_err(Failure::usage)?
    } else {
        Vec::new()
    };
    let probes = Probes::load(&config, &interfaces, &caps, false).map_err(Failure::runtime)?;
    let mut by_program: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut unavailable = Vec::new();
    for a in &probes.attachments {
        if a.attached {
            by_program
                .entry(a.program)
                .or_default()
                .push(format!("{} ({})", a.hook, a.mode));
        } else {
            unavailable.push(format!(
                "{} {}: {}",
                a.program,
                a.hook,
                a.error.as_deref().unwrap_or("not attached")
            ));
        }
    }
    for (program, hooks) in by_program {
        println!("attached          {program}: {}", hooks.join(", "));
    }
    for line in &unavailable {
        println!("unavailable       {line}");
    }
    for line in &probes.limitations {
        println!("partial           {line}");
    }
    println!("events            {}", probes.event_transport);
    drop(probes);
    if unavailable.is_empty() {
        println!("result            ok: every program loaded and attached, then detached");
    } else {
        println!(
            "result            ok (degraded): {} optional program(s) unavailable, the rest attached and detached",
            unavailable.len()
        );
    }
    Ok(())
}

/// `sonde baseline`: reference points for benchmarks.
pub fn baseline(cmd: BaselineCommand) -> Result<(), Failure> {
    let baseline = match cmd {
        BaselineCommand::Syscalls { hook, timed } => Baseline::Syscalls {
            timed,
            hook: match hook.as_str() {
                "raw_tracepoint" => SyscallHook::RawTracepoint,
                "tracepoint" => SyscallHook::Tracepoint,
                other => {
                    return Err(Failure::usage(format!(
                        "--hook {other}: expected raw_tracepoint or tracepoint"
                    )));
                }
            },
        },
        BaselineCommand::Packets {
            interfaces,
            ingress,
        } => Baseline::Packets {
            interfaces,
            ingress,
        },
        BaselineCommand::Hooks {
            tracepoints,
            raw_tracepoints,
        } => {
            if tracepoints.is_empty() && raw_tracepoints.is_empty() {
                return Err(Failure::usage(
                    "baseline hooks: name at least one --tracepoint CATEGORY:NAME or \
                     --raw-tracepoint NAME"
                        .to_owned(),
                ));
            }
            let mut classic = Vec::new();
            for tp in tracepoints {
                match tp.split_once(':') {
                    Some((category, name)) if !category.is_empty() && !name.is_empty() => {
                        classic.push((category.to_owned(), name.to_owned()));
                    }
                    _ => {
                        return Err(Failure::usage(format!(
                            "--tracepoint {tp}: expected CATEGORY:NAME, e.g. block:block_rq_issue"
                        )));
                    }
                }
            }
            Baseline::Hooks {
                tracepoints: classic,
                raw_tracepoints,
            }
        }
        BaselineCommand::RingReader { ring_bytes } => Baseline::RingReader { ring_bytes },
    };
    probes::baseline::run(baseline).map_err(Failure::runtime)
}
