//! What the kernel says: per-program run time (bpf_stats), CPU time per
//! category (/proc/stat) and per process (/proc/PID/stat, status).

use std::{collections::HashMap, fs, process::Command, time::Duration};

use anyhow::{Context as _, bail};

use sonde_tests::sys::output;

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled = 1` while it lives; the prior value is
/// restored on drop.
pub struct BpfStats {
    prior: String,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<BpfStats> {
        let prior = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats { prior })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.prior) {
            eprintln!(
                "warning: could not restore {BPF_STATS} to {}: {e}",
                self.prior
            );
        }
    }
}

/// One loaded program as `bpftool prog show` sees it.
#[derive(Debug, Clone)]
pub struct Prog {
    pub id: u64,
    pub kind: String,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// Size of the program as the verifier left it (8 bytes an
    /// instruction).
    pub xlated_bytes: u64,
}

/// Every loaded program.
pub fn progs() -> anyhow::Result<Vec<Prog>> {
    let out = output(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&out).context("parsing `bpftool -j prog show`")?;
    Ok(list
        .iter()
        .map(|p| Prog {
            id: p["id"].as_u64().unwrap_or_default(),
            kind: p["type"].as_str().unwrap_or_default().to_owned(),
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            run_time_ns: p["run_time_ns"].as_u64().unwrap_or_default(),
            run_cnt: p["run_cnt"].as_u64().unwrap_or_default(),
            xlated_bytes: p["bytes_xlated"].as_u64().unwrap_or_default(),
        })
        .collect())
}

/// ns per run of each program in `after` (by name) between two snapshots
/// of the same programs; programs that did not run are left out.
pub fn ns_per_run(before: &[Prog], after: &[Prog]) -> Vec<(String, f64)> {
    let before: HashMap<u64, &Prog> = before.iter().map(|p| (p.id, p)).collect();
    after
        .iter()
        .filter_map(|a| {
            let b = before.get(&a.id)?;
            let runs = a.run_cnt.checked_sub(b.run_cnt)?;
            let ns = a.run_time_ns.checked_sub(b.run_time_ns)?;
            (runs > 0).then(|| (a.name.clone(), ns as f64 / runs as f64))
        })
        .collect()
}

/// Programs on syscall or scheduler hooks (tracepoints, raw tracepoints,
/// tracing, kprobes, perf events): anything that taxes every syscall.
pub fn tracing_progs() -> anyhow::Result<Vec<Prog>> {
    Ok(progs()?
        .into_iter()
        .filter(|p| {
            matches!(
                p.kind.as_str(),
                "tracepoint" | "raw_tracepoint" | "tracing" | "kprobe" | "perf_event"
            )
        })
        .collect())
}

/// Before each round of a syscall measurement: waits (up to a limit) until
/// no one else's tracing programs are loaded, so no variant is measured
/// with a stranger's probes attached (another agent, a test run), and
/// counts the rounds that started anyway. Use it while none of ours run.
pub struct QuietGate {
    wait: Duration,
    rounds: usize,
    busy: usize,
    seen: std::collections::BTreeSet<String>,
}

impl QuietGate {
    pub fn new(wait: Duration) -> QuietGate {
        QuietGate {
            wait,
            rounds: 0,
            busy: 0,
            seen: Default::default(),
        }
    }

    pub fn check(&mut self) -> anyhow::Result<()> {
        self.rounds += 1;
        let deadline = std::time::Instant::now() + self.wait;
        loop {
            let progs = tracing_progs()?;
            if progs.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                self.busy += 1;
                let names: Vec<String> = progs.into_iter().map(|p| p.name).collect();
                println!(
                    "round starts with foreign tracing programs: {}",
                    names.join(", ")
                );
                self.seen.extend(names);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A note for the results when some rounds were not quiet.
    pub fn note(&self) -> Option<String> {
        (self.busy > 0).then(|| {
            format!(
                "{} of {} rounds started while someone else's tracing programs were loaded \
                 ({}); they tax every variant of a round alike, which the added-ns figures \
                 cancel to first order, but they widen the spread.",
                self.busy,
                self.rounds,
                self.seen.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Clock ticks per second of /proc/stat and /proc/PID/stat.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The machine's CPU time by category (the `cpu` line of /proc/stat), in
/// seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
    /// user + nice + system + irq + softirq + steal: everything but idle.
    pub busy: f64,
}

impl CpuTimes {
    pub fn now() -> anyhow::Result<CpuTimes> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().next().unwrap_or_default();
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 8 {
            bail!("unexpected /proc/stat line {line:?}");
        }
        let hz = clock_ticks();
        // user nice system idle iowait irq softirq steal
        Ok(CpuTimes {
            user: (v[0] + v[1]) / hz,
            system: v[2] / hz,
            softirq: v[6] / hz,
            busy: (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz,
        })
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            softirq: self.softirq - earlier.softirq,
            busy: self.busy - earlier.busy,
        }
    }
}

/// CPU seconds a process's threads have run (user and system), from the
/// scheduler's nanosecond counters (`/proc/PID/task/*/schedstat`; the
/// tick-based times in /proc/PID/stat are too coarse for an idle agent).
/// Threads that exit between two readings take their time with them.
pub fn proc_cpu(pid: u32) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for task in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A thread may exit while we read: skip it.
        let Ok(s) = fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        ns += s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("unexpected schedstat in {dir}: {s:?}"))?;
    }
    Ok(ns as f64 / 1e9)
}

/// Resident memory of a process, in MB (10^6 bytes).
#[derive(Debug, Default, Clone, Copy)]
pub struct Mem {
    /// VmRSS: all resident pages.
    pub rss: f64,
    /// RssAnon: heap, stacks, anonymous mappings.
    pub anon: f64,
    /// RssFile: pages of mapped files (the binary itself).
    pub file: f64,
}

pub fn proc_mem(pid: u32) -> anyhow::Result<Mem> {
    let p = format!("/proc/{pid}/status");
    let s = fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    let mb = |key: &str| -> anyhow::Result<f64> {
        let kib: f64 = s
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in {p}"))?;
        Ok(kib * 1024.0 / 1e6)
    };
    Ok(Mem {
        rss: mb("VmRSS:")?,
        anon: mb("RssAnon:")?,
        file: mb("RssFile:")?,
    })
}
