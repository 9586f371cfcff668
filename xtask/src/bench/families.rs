//! Scenario: hook families (block I/O, run queue, exec/exit, TCP, drops),
//! each alone under a bounded load made with real tools, as kernel ns per
//! event from bpf_stats: Sonde with only that family's signal on, an empty
//! program on the same hooks, and bpftrace doing the job in tracepoint form.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use sonde_tests::{
    block::LoopDevice,
    process::command,
    sys::{cmd, output},
};

use super::{
    Ctx, Def,
    common::{
        BenchNet, Proc,
        bins::{self, Running},
        kernel::{self, BpfStats},
        net, start_agent,
        stats::{Summary, median, ratio, round_robin},
    },
    report::{Op, Scenario, num},
};

pub const DEF: Def = Def {
    id: "families",
    title: "Hook families",
    about: "Each hook family alone, under a bounded load made with real tools, measured in the \
            kernel: bpf_stats (`kernel.bpf_stats_enabled = 1`) run_time_ns and run_cnt of every \
            program the variant's process holds (found through its /proc/PID/fdinfo), over the \
            load's window. Variants, interleaved round by round: *empty*, `sonde baseline hooks` \
            (an empty program of the kind Sonde attaches there, classic or raw tracepoint, on \
            the hooks of the job); *Sonde*, `sonde run` with only that family's signal on \
            (syscalls, network, MAPE-K and every other signal off); *bpftrace*, the bpftrace \
            tool doing the job in tracepoint form (this kernel has no kprobes), aggregating in \
            maps (histograms and counts, nothing printed per event). *ns per event* is the \
            variant's total program time over the runs of its programs on the job's hooks (the \
            hooks the bpftrace tool needs; Sonde's programs on further hooks of the family, \
            such as TCP's RTT and reset hooks, add their time but no events). Hooks are \
            machine-wide, so the events include everything else the machine did in the window; \
            every variant is divided by its own count. bpf_stats times the program only: a \
            classic tracepoint's record (built before the program runs) is not in it, which \
            flatters bpftrace's classic tracepoints against Sonde's raw ones (run queue, TCP). \
            Loads: block I/O, 4 KiB O_DIRECT writes with `dd` to a loop device on a tmpfs file; \
            run queue, `stress-ng --cpu 4 --cpu-load 70`; exec/exit, a shell loop running \
            `/bin/true`; TCP, `sonde-workload connect-rate` from the bench namespace to a \
            listener on the host end of the veth; drops, `sonde-workload udp-flood` from the \
            namespace into an iptables DROP rule on the host end, run once before each \
            variant's window as well (Sonde samples its count by interface at a rate it \
            measures a cycle or two into a flood; the window is its steady state). Targets (judged on the \
            median, reported, never failing the run): Sonde ≤ 0.7× bpftrace and ≤ 2× empty.",
    run,
};

/// Targets of issue 19, on the median ns per event.
const TARGET_VS_BPFTRACE: f64 = 0.7;
const TARGET_VS_EMPTY: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Block,
    RunQueue,
    Exec,
    Tcp,
    Drops,
}

/// One hook family: how Sonde is confined to it, its empty floor, its
/// bpftrace peer and its load.
struct Family {
    id: &'static str,
    name: &'static str,
    /// The config table of Sonde's signal (`[block] enabled = true`).
    table: &'static str,
    /// Sonde's programs on the job's hooks: their runs are the events (on
    /// every tier, so a kernel that picks another still counts).
    job_programs: &'static [&'static str],
    /// The empty floor's hooks: classic tracepoints (CATEGORY:NAME) and
    /// raw tracepoints, of the kind Sonde takes on this kernel.
    empty_tracepoints: &'static [&'static str],
    empty_raw: &'static [&'static str],
    /// What the bpftrace script is modelled on.
    peer: &'static str,
    bpftrace: &'static str,
    load: Load,
    /// Sonde adapts to the load's rate (drops: the period of the count by
    /// interface follows the drop rate, a cycle or two behind): the load
    /// runs one window's length before every variant's window, so that the
    /// window measures the steady state, not the first seconds of a flood.
    warm_up: bool,
}

const FAMILIES: [Family; 5] = [
    Family {
        id: "block",
        name: "block I/O",
        table: "block",
        job_programs: &[
            "sonde_block_issue_raw",
            "sonde_block_complete_raw",
            "sonde_block_issue",
            "sonde_block_complete",
        ],
        empty_tracepoints: &[],
        empty_raw: &["block_rq_issue", "block_rq_complete"],
        peer: "biolatency",
        bpftrace: "tracepoint:block:block_rq_issue { @start[args->dev, args->sector] = nsecs; } \
                   tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/ { \
                   @usecs = hist((nsecs - @start[args->dev, args->sector]) / 1000); \
                   delete(@start[args->dev, args->sector]); }",
        load: Load::Block,
        warm_up: false,
    },
    Family {
        id: "runqueue",
        name: "run queue",
        table: "runqueue",
        job_programs: &[
            "sonde_runq_switch_raw",
            "sonde_runq_wakeup_raw",
            "sonde_runq_switch_tp",
            "sonde_runq_wakeup_tp",
        ],
        empty_tracepoints: &[],
        empty_raw: &["sched_switch", "sched_wakeup", "sched_wakeup_new"],
        peer: "runqlat",
        bpftrace: "tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { \
                   @qtime[args->pid] = nsecs; } \
                   tracepoint:sched:sched_switch { \
                   if (args->prev_state == 0) { @qtime[args->prev_pid] = nsecs; } \
                   $ns = @qtime[args->next_pid]; \
                   if ($ns > 0) { @usecs = hist((nsecs - $ns) / 1000); } \
                   delete(@qtime[args->next_pid]); }",
        load: Load::RunQueue,
        warm_up: false,
    },
    Family {
        id: "process",
        name: "exec/exit",
        table: "process",
        job_programs: &["sonde_process_exec", "sonde_process_exit"],
        empty_tracepoints: &["sched:sched_process_exec", "sched:sched_process_exit"],
        empty_raw: &[],
        peer: "execsnoop + exitsnoop, counted",
        bpftrace: "tracepoint:sched:sched_process_exec { @execs[comm] = count(); } \
                   tracepoint:sched:sched_process_exit /pid == tid/ { \
                   @exits[comm, curtask->exit_code >> 8] = count(); \
                   @age_ms = hist((nsecs - curtask->start_time) / 1000000); }",
        load: Load::Exec,
        warm_up: false,
    },
    Family {
        id: "tcp",
        name: "TCP",
        table: "tcp",
        job_programs: &[
            "sonde_tcp_state_raw",
            "sonde_tcp_retransmit_raw",
            "sonde_tcp_state",
            "sonde_tcp_retransmit",
        ],
        empty_tracepoints: &[],
        empty_raw: &["inet_sock_set_state", "tcp_retransmit_skb"],
        peer: "tcplife + tcpretrans, aggregated",
        bpftrace: "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { \
                   if (args->newstate != 7 && @birth[args->skaddr] == 0) { \
                   @birth[args->skaddr] = nsecs; } \
                   if (args->newstate == 7 && @birth[args->skaddr] > 0) { \
                   @life_us = hist((nsecs - @birth[args->skaddr]) / 1000); \
                   @closed[args->dport] = count(); delete(@birth[args->skaddr]); } } \
                   tracepoint:tcp:tcp_retransmit_skb { @retransmits[args->state] = count(); }",
        load: Load::Tcp,
        warm_up: false,
    },
    Family {
        id: "drops",
        name: "drops",
        table: "drops",
        job_programs: &["sonde_kfree_skb_raw", "sonde_kfree_skb"],
        empty_tracepoints: &[],
        empty_raw: &["kfree_skb"],
        peer: "drop-reason counter",
        bpftrace: "tracepoint:skb:kfree_skb { @drops[args->reason] = count(); }",
        load: Load::Drops,
        warm_up: true,
    },
];

/// The signals `sonde run` can turn off, by config table; the family's own
/// is turned on.
const SIGNAL_TABLES: [&str; 6] = [
    "syscalls", "network", "drops", "runqueue", "process", "block",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Empty,
    Sonde,
    Bpftrace,
}

const VARIANTS: [Variant; 3] = [Variant::Empty, Variant::Sonde, Variant::Bpftrace];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Empty => "empty",
            Variant::Sonde => "Sonde",
            Variant::Bpftrace => "bpftrace",
        }
    }

    fn start(self, ctx: &Ctx, f: &Family) -> anyhow::Result<Running> {
        Ok(match self {
            Variant::Empty => {
                let mut args = vec!["hooks"];
                for tp in f.empty_tracepoints {
                    args.extend(["--tracepoint", tp]);
                }
                for tp in f.empty_raw {
                    args.extend(["--raw-tracepoint", tp]);
                }
                Running::Proc(bins::baseline(&ctx.bins, &args)?)
            }
            Variant::Sonde => Running::Agent(start_agent(&ctx.bins, &sonde_config(f), &[])?),
            Variant::Bpftrace => Running::Bpftrace(bins::bpftrace(f.bpftrace)?.0),
        })
    }
}

/// `sonde run`'s configuration with only `f`'s signal on.
fn sonde_config(f: &Family) -> String {
    let mut toml = String::new();
    for table in SIGNAL_TABLES {
        toml += &format!("[{table}]\nenabled = {}\n", table == f.table);
    }
    // TCP's listen-overflow program sits on kfree_skb, a drops hook: on
    // only with TCP.
    toml += &format!(
        "[tcp]\nenabled = {0}\nlisten_overflows = {0}\n",
        f.table == "tcp"
    );
    toml += "[mapek]\nenabled = false\ngovern_cost = false\n[kubernetes]\nenabled = false\n";
    toml
}

/// What one variant's programs did over one load window.
#[derive(Debug, Clone, Default)]
struct Window {
    /// Total program time, all programs.
    ns: f64,
    /// Runs on the job's hooks.
    events: f64,
    /// Per program: (ns, runs, xlated instructions).
    programs: BTreeMap<String, (f64, f64, u64)>,
}

impl Window {
    fn ns_per_event(&self) -> f64 {
        if self.events > 0.0 {
            self.ns / self.events
        } else {
            f64::NAN
        }
    }
}

/// Loads, sized for `--quick` or a full run.
struct Sizes {
    block_writes: u64,
    secs: u64,
    execs: u64,
    connects_per_s: u64,
}

fn run(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let rounds = ctx.pick(5, 2);
    let sizes = Sizes {
        block_writes: ctx.pick(20_000, 3_000),
        secs: ctx.pick(3, 1),
        execs: ctx.pick(600, 150),
        connects_per_s: 500,
    };
    let _stats = BpfStats::enable()?;
    let mut summary = Vec::new();
    for f in &FAMILIES {
        println!("-- {} ({rounds} rounds)", f.name);
        match family(ctx, s, f, rounds, &sizes) {
            Ok(line) => summary.push(line),
            Err(e) => {
                // One family's failure must not hide the others' figures.
                println!("{}: failed: {e:#}", f.name);
                s.error.get_or_insert_with(|| format!("{}: {e:#}", f.id));
            }
        }
    }
    s.raw = serde_json::json!({
        "rounds": rounds,
        "block_writes": sizes.block_writes,
        "seconds_per_window": sizes.secs,
        "execs": sizes.execs,
        "connects_per_second": sizes.connects_per_s,
        "loadavg_at_end": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "families": summary,
    });
    Ok(())
}

/// Measures one family over `rounds` interleaved rounds; returns its
/// summary for the raw results.
fn family(
    ctx: &Ctx,
    s: &mut Scenario,
    f: &Family,
    rounds: usize,
    sizes: &Sizes,
) -> anyhow::Result<serde_json::Value> {
    let setup = Setup::create(f.load)?;
    let windows = round_robin(
        rounds,
        &VARIANTS,
        |_| Ok(()),
        |&v| {
            let running = v.start(ctx, f)?;
            let ids = prog_ids(running.pid())?;
            if ids.is_empty() {
                bail!("{} ({}) holds no BPF programs", v.name(), f.name);
            }
            if f.warm_up {
                load(ctx, f.load, &setup, sizes)?;
            }
            let before = snapshot(&ids)?;
            load(ctx, f.load, &setup, sizes)?;
            let after = snapshot(&ids)?;
            drop(running);
            let w = window(v, f, &before, &after);
            println!(
                "{:<10} {:<9} {:>9.0} events {:>8.1} ns/event",
                f.name,
                v.name(),
                w.events,
                w.ns_per_event()
            );
            Ok(w)
        },
    )?;
    let of = |v: Variant| &windows[VARIANTS.iter().position(|&x| x == v).unwrap_or(0)];
    let per_event = |v: Variant| -> Vec<f64> { of(v).iter().map(Window::ns_per_event).collect() };
    let (empty, sonde, bpftrace) = (
        per_event(Variant::Empty),
        per_event(Variant::Sonde),
        per_event(Variant::Bpftrace),
    );
    for (v, samples) in [
        (Variant::Empty, &empty),
        (Variant::Sonde, &sonde),
        (Variant::Bpftrace, &bpftrace),
    ] {
        s.figure(
            format!("{}: {} ns per event", f.name, v.name()),
            "ns",
            samples,
        );
    }
    let vs_bpftrace = ratio(&sonde, &bpftrace);
    let vs_empty = ratio(&sonde, &empty);
    s.target(
        format!("{}: Sonde / bpftrace ({}) ns per event", f.name, f.peer),
        "×",
        &vs_bpftrace,
        Op::AtMost,
        TARGET_VS_BPFTRACE,
    );
    s.target(
        format!("{}: Sonde / empty ns per event", f.name),
        "×",
        &vs_empty,
        Op::AtMost,
        TARGET_VS_EMPTY,
    );
    // Per program: the measured cause where a family misses.
    let mut programs = Vec::new();
    for v in VARIANTS {
        let ws = of(v);
        let names: BTreeSet<&String> = ws.iter().flat_map(|w| w.programs.keys()).collect();
        for name in names {
            let runs: Vec<f64> = ws
                .iter()
                .map(|w| w.programs.get(name).map_or(0.0, |p| p.1))
                .collect();
            if runs.iter().all(|&r| r == 0.0) {
                continue;
            }
            let ns_per_run: Vec<f64> = ws
                .iter()
                .map(|w| match w.programs.get(name) {
                    Some(&(ns, runs, _)) if runs > 0.0 => ns / runs,
                    _ => f64::NAN,
                })
                .collect();
            let insns = ws
                .iter()
                .find_map(|w| w.programs.get(name).map(|p| p.2))
                .unwrap_or_default();
            s.figure_any(
                format!("{}: {}: {name} ns per run", f.name, v.name()),
                "ns",
                &ns_per_run,
            );
            programs.push(format!(
                "{} `{name}` {} ns/run × {} runs, {insns} xlated insns",
                v.name(),
                num(median(&ns_per_run)),
                num(median(&runs)),
            ));
        }
    }
    let events: Vec<f64> = of(Variant::Sonde).iter().map(|w| w.events).collect();
    s.note(format!(
        "{}: Sonde {} ns per event (rounds {}), empty {} ({}), bpftrace {} ({}): \
         Sonde/bpftrace {:.2}× ({}), Sonde/empty {:.2}× ({}); medians, {} events per Sonde \
         window. Per program (median over rounds): {}.",
        f.name,
        num(median(&sonde)),
        range(&sonde),
        num(median(&empty)),
        range(&empty),
        num(median(&bpftrace)),
        range(&bpftrace),
        median(&vs_bpftrace),
        range2(&vs_bpftrace),
        median(&vs_empty),
        range2(&vs_empty),
        num(median(&events)),
        programs.join("; "),
    ));
    Ok(serde_json::json!({
        "family": f.id,
        "peer": f.peer,
        "bpftrace": f.bpftrace,
        "sonde_config": sonde_config(f),
        "ns_per_event": {"empty": empty, "sonde": sonde, "bpftrace": bpftrace},
        "programs": programs,
    }))
}

/// "min–max" of the samples.
fn range(samples: &[f64]) -> String {
    let s = Summary::of(samples);
    format!("{}–{}", num(s.min), num(s.max))
}

/// "min–max" of ratios, two decimals.
fn range2(samples: &[f64]) -> String {
    let s = Summary::of(samples);
    format!("{:.2}–{:.2}", s.min, s.max)
}

/// The ids of the BPF programs process `pid` holds, directly or through a
/// link or perf event (`prog_id:` in the fdinfo of its fds).
fn prog_ids(pid: u32) -> anyhow::Result<BTreeSet<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // An fd may close while we read: skip it.
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    Ok(ids)
}

fn snapshot(ids: &BTreeSet<u64>) -> anyhow::Result<Vec<kernel::Prog>> {
    Ok(kernel::progs()?
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .collect())
}

fn window(v: Variant, f: &Family, before: &[kernel::Prog], after: &[kernel::Prog]) -> Window {
    let mut w = Window::default();
    for a in after {
        let Some(b) = before.iter().find(|b| b.id == a.id) else {
            continue;
        };
        let ns = a.run_time_ns.saturating_sub(b.run_time_ns) as f64;
        let runs = a.run_cnt.saturating_sub(b.run_cnt) as f64;
        w.ns += ns;
        // The empty floor and bpftrace hook only the job's hooks.
        if v != Variant::Sonde || f.job_programs.contains(&a.name.as_str()) {
            w.events += runs;
        }
        // The kernel keeps 15 characters of a name without BTF: bpftrace's
        // sched_process_exec and _exit are both `sched_process_e`. Numbered
        // in load (id) order, which is the script's order.
        let same: Vec<u64> = after
            .iter()
            .filter(|p| p.name == a.name)
            .map(|p| p.id)
            .collect();
        let key = if same.len() > 1 {
            let k = same.iter().filter(|&&id| id < a.id).count() + 1;
            format!("{}#{k}", a.name)
        } else {
            a.name.clone()
        };
        let e = w
            .programs
            .entry(key)
            .or_insert((0.0, 0.0, a.xlated_bytes / 8));
        e.0 += ns;
        e.1 += runs;
    }
    w
}

/// Everything a family's load needs, set up once for all its rounds and
/// removed on drop.
struct Setup {
    _net: Option<BenchNet>,
    loopdev: Option<LoopDevice>,
    _drop_rule: Option<DropRule>,
}

impl Setup {
    fn create(load: Load) -> anyhow::Result<Setup> {
        let mut setup = Setup {
            _net: None,
            loopdev: None,
            _drop_rule: None,
        };
        match load {
            // On tmpfs: the load times the hooks, not a disk. 96 MiB:
            // room for 20,000 writes of 4 KiB.
            Load::Block => {
                setup.loopdev = Some(LoopDevice::try_new(
                    std::path::Path::new("/dev/shm/sb-families-block.img"),
                    96 << 20,
                    None,
                    false,
                )?)
            }
            Load::Tcp => setup._net = Some(BenchNet::create()?),
            Load::Drops => {
                setup._net = Some(BenchNet::create()?);
                setup._drop_rule = Some(DropRule::add()?);
            }
            Load::RunQueue | Load::Exec => {}
        }
        Ok(setup)
    }
}

const TCP_PORT: u16 = 40_010;
const DROP_PORT: u16 = 40_011;
/// Slack on top of a load's nominal length before it is killed.
const SLACK: Duration = Duration::from_secs(60);

/// One window of the family's load, run to completion.
fn load(ctx: &Ctx, load: Load, setup: &Setup, sizes: &Sizes) -> anyhow::Result<()> {
    let secs = sizes.secs.to_string();
    let timeout = Duration::from_secs(sizes.secs) + SLACK;
    match load {
        Load::Block => {
            let dev = setup.loopdev.as_ref().context("no loop device")?.device();
            let (of, count) = (format!("of={dev}"), format!("count={}", sizes.block_writes));
            run_tool(
                cmd(
                    "dd",
                    &[
                        "if=/dev/zero",
                        &of,
                        "bs=4k",
                        &count,
                        "oflag=direct",
                        "status=none",
                    ],
                ),
                timeout,
            )
        }
        Load::RunQueue => run_tool(
            cmd(
                "stress-ng",
                &[
                    "--cpu",
                    "4",
                    "--cpu-load",
                    "70",
                    "--timeout",
                    &format!("{secs}s"),
                    "--quiet",
                ],
            ),
            timeout,
        ),
        Load::Exec => {
            let script = format!(
                "i=0; while [ \"$i\" -lt {} ]; do /bin/true; i=$((i+1)); done",
                sizes.execs
            );
            run_tool(cmd("sh", &["-c", &script]), timeout)
        }
        Load::Tcp => {
            let at = format!("{}:{TCP_PORT}", net().host_ip);
            let mut listener = bins::spawn_workload(
                &ctx.bins,
                None,
                &[0],
                &["tcp-listen", &at, &(sizes.secs + 30).to_string()],
            )?;
            listener.wait_line("ready", Duration::from_secs(5))?;
            let rate = sizes.connects_per_s.to_string();
            let result = bins::workload(
                &ctx.bins,
                Some(net().netns),
                &[1],
                &["connect-rate", &at, &rate, &secs],
                timeout,
            )?;
            drop(listener);
            println!("connect-rate: {result}");
            Ok(())
        }
        Load::Drops => {
            let to = format!("{}:{DROP_PORT}", net().host_ip);
            bins::workload(
                &ctx.bins,
                Some(net().netns),
                &[1],
                &["udp-flood", &to, &secs, "64"],
                timeout,
            )?;
            Ok(())
        }
    }
}

/// Runs a load tool to completion (killed after `timeout`), failing with
/// its output when it fails.
fn run_tool(tool: Command, timeout: Duration) -> anyhow::Result<()> {
    let name = tool.get_program().to_string_lossy().into_owned();
    Proc::spawn(&name, tool)?.finish(timeout)?;
    Ok(())
}

/// An iptables rule dropping UDP to [`DROP_PORT`] arriving on the bench
/// veth's host end, removed on drop.
struct DropRule {
    spec: Vec<String>,
}

impl DropRule {
    fn add() -> anyhow::Result<DropRule> {
        let port = DROP_PORT.to_string();
        let spec: Vec<String> = [
            "INPUT",
            "-i",
            net().host_if,
            "-p",
            "udp",
            "--dport",
            &port,
            "-m",
            "comment",
            "--comment",
            "sb-families",
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut c = command(None, "iptables");
        c.arg("-I").args(&spec);
        output(&mut c).context("adding the iptables DROP rule")?;
        Ok(DropRule { spec })
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        let mut c = command(None, "iptables");
        c.arg("-D").args(&self.spec);
        if let Err(e) = output(&mut c) {
            eprintln!("warning: removing the iptables DROP rule: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sonde_is_confined_to_one_family() {
        let toml = sonde_config(&FAMILIES[0]);
        assert!(toml.contains("[block]\nenabled = true\n"));
        assert!(toml.contains("[syscalls]\nenabled = false\n"));
        assert!(toml.contains("[tcp]\nenabled = false\nlisten_overflows = false\n"));
        let tcp = FAMILIES.iter().find(|f| f.id == "tcp").unwrap();
        assert!(sonde_config(tcp).contains("[tcp]\nenabled = true\nlisten_overflows = true\n"));
        for f in &FAMILIES {
            assert!(
                !f.empty_tracepoints.is_empty() || !f.empty_raw.is_empty(),
                "{}",
                f.id
            );
        }
    }

    #[test]
    fn events_are_runs_on_the_job_hooks() {
        let prog = |id, name: &str, ns, runs| kernel::Prog {
            id,
            kind: "raw_tracepoint".into(),
            name: name.into(),
            run_time_ns: ns,
            run_cnt: runs,
            xlated_bytes: 80,
        };
        let tcp = FAMILIES.iter().find(|f| f.id == "tcp").unwrap();
        let before = [
            prog(1, "sonde_tcp_state_raw", 0, 0),
            prog(2, "sonde_tcp_rtt_raw", 0, 0),
        ];
        let after = [
            prog(1, "sonde_tcp_state_raw", 1000, 10),
            prog(2, "sonde_tcp_rtt_raw", 1000, 90),
        ];
        let w = window(Variant::Sonde, tcp, &before, &after);
        assert_eq!((w.ns, w.events), (2000.0, 10.0));
        assert_eq!(w.ns_per_event(), 200.0);
        assert_eq!(w.programs["sonde_tcp_rtt_raw"], (1000.0, 90.0, 10));
        // Every run of the floor's or bpftrace's programs is an event.
        assert_eq!(window(Variant::Empty, tcp, &before, &after).events, 100.0);
        // Programs sharing a truncated name stay apart.
        let before = [
            prog(7, "sched_process_e", 0, 0),
            prog(8, "sched_process_e", 0, 0),
        ];
        let after = [
            prog(7, "sched_process_e", 100, 1),
            prog(8, "sched_process_e", 300, 1),
        ];
        let w = window(Variant::Bpftrace, tcp, &before, &after);
        assert_eq!(w.programs["sched_process_e#1"].0, 100.0);
        assert_eq!(w.programs["sched_process_e#2"].0, 300.0);
    }
}
