//! System calls: counts, errors and latency per syscall, on
//! raw_syscalls:sys_enter / sys_exit with sched:sched_switch (kernel side:
//! agent-ebpf's syscalls module). `[syscalls] enabled` turns it on and
//! `[syscalls] hook` forces a tier.
//!
//! The one required signal: the agent does not run without a tier of it,
//! and a tier is its three programs or nothing (a start recorded with no
//! exit program to consume it would fill the map). Syscalls slower than
//! `slow_threshold_ms` (not in `slow_ignore`) leave the kernel as events on
//! the syscall ring, decoded in `events`. While MAPE-K asks who is behind a
//! storm (`per_process`, a runtime setting) the kernel also counts per
//! process; each cycle takes and clears those counts, and adds those of
//! the busiest processes that belong to a pod or container (`crate::pods`)
//! to that pod's or container's totals (`sonde_pod_syscalls_total`).
//!
//! A thread that dies without returning from a syscall leaves its start
//! parked in SYSCALL_START; every few cycles those of threads gone are
//! removed (`sonde_syscall_starts_stale_removed_total`). Starts the full map
//! could not keep are the `syscall_latency` completeness.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    sync::Arc,
};

use agent_common::{
    config::{CFG_SLOW_SYSCALL_NS, CFG_SYSCALL_SAMPLE_EVERY, CFG_SYSCALLS_PER_PROCESS},
    counters::SYSCALL_START_MAP_FULL,
    merge::Merge,
    syscalls::{
        MAX_SYSCALLS, ProcessSyscalls, SLOW_SYSCALL_IGNORE_MAP, SYSCALL_PROCESSES_MAP,
        SYSCALL_START_MAP, SYSCALL_STATS_MAP, SyscallStart, SyscallStats,
    },
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use prometheus::proto::{MetricFamily, MetricType};
use tracing::warn;

use super::{Constant, OpenError, Reading, Signal, Source, TracepointField, take};
use crate::{
    map_batch,
    config::{Config, SyscallHook},
    family::{Family, log2_buckets},
    probes::tiers::{self, Hook, Requires, Tier, program},
    syscall_table,
};

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: TRACEPOINT_FIELDS,
    btf_fields: &[],
    symbols: &[],
    constants: CONSTANTS,
    enabled: |config| config.syscalls.enabled,
    forced_tier: |config| match config.syscalls.hook {
        SyscallHook::Auto => None,
        SyscallHook::RawTracepoint => Some("raw_tracepoint"),
        SyscallHook::Tracepoint => Some("tracepoint"),
    },
    reads: "syscall statistics",
    open,
};

/// Raw tracepoints (cheaper: the arguments come straight from
/// `TP_PROTO`), else classic tracepoints with the record offsets from
/// tracefs. Exits first and entries last, so that no start is recorded
/// before the programs that consume it are in place.
const TIERS: tiers::Signal = tiers::Signal {
    name: "syscalls",
    required: true,
    tiers: &[
        Tier {
            mode: "raw_tracepoint",
            min_kernel: (4, 17),
            requires: Requires::RawTracepoints,
            programs: &[
                program("sonde_sys_exit_raw", Hook::RawTracepoint("sys_exit")),
                program("sonde_sched_switch_raw", Hook::RawTracepoint("sched_switch")),
                program("sonde_sys_enter_raw", Hook::RawTracepoint("sys_enter")),
            ],
        },
        Tier {
            mode: "tracepoint",
            min_kernel: (4, 7),
            requires: Requires::Tracefs,
            programs: &[
                program(
                    "sonde_sys_exit_tp",
                    Hook::Tracepoint("raw_syscalls", "sys_exit"),
                ),
                program(
                    "sonde_sched_switch_tp",
                    Hook::Tracepoint("sched", "sched_switch"),
                ),
                program(
                    "sonde_sys_enter_tp",
                    Hook::Tracepoint("raw_syscalls", "sys_enter"),
                ),
            ],
        },
    ],
};

/// The classic tier's record offsets (the object's defaults, 8 and 16,
/// where tracefs cannot say).
const TRACEPOINT_FIELDS: &[TracepointField] = &[
    ("TP_SYS_ENTER_ID_OFFSET", "raw_syscalls", "sys_enter", "id"),
    ("TP_SYS_EXIT_RET_OFFSET", "raw_syscalls", "sys_exit", "ret"),
];

/// Syscalls that never return (no start is recorded for them), from this
/// architecture's table.
const CONSTANTS: &[Constant] = &[
    ("SYSCALL_NR_EXIT", || syscall_table::never_returning().0),
    ("SYSCALL_NR_EXIT_GROUP", || {
        syscall_table::never_returning().1
    }),
];

fn open(ebpf: &mut Ebpf, _: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Maps {
        stats: take(ebpf, SYSCALL_STATS_MAP)?,
        starts: take(ebpf, SYSCALL_START_MAP)?,
        slow_ignore: take(ebpf, SLOW_SYSCALL_IGNORE_MAP)?,
        processes: RefCell::new(take(ebpf, SYSCALL_PROCESSES_MAP)?),
        by_pod: RefCell::default(),
        stale_starts_removed: 0,
        starts_lost: 0,
        latency_histograms: 0,
        histograms: RefCell::default(),
    }))
}

struct Maps {
    stats: PerCpuArray<MapData, SyscallStats>,
    starts: HashMap<MapData, u32, SyscallStart>,
    slow_ignore: Array<MapData, u32>,
    /// Syscalls per process while counted (read and cleared each cycle).
    processes: RefCell<PerCpuHashMap<MapData, u32, ProcessSyscalls>>,
    /// Per-process counts summed by pod and container.
    by_pod: RefCell<ByPod>,
    /// Parked starts removed because their thread was gone.
    stale_starts_removed: u64,
    /// The diagnostic counter of starts the full map could not keep, as
    /// this cycle read it.
    starts_lost: u64,
    /// `syscalls.latency_histograms`.
    latency_histograms: usize,
    /// The syscalls whose latency histogram is exported.
    histograms: RefCell<BTreeSet<u32>>,
}

/// Processes kept per cycle while counted per process.
const TOP_PROCESSES: usize = 8;

/// Pods and containers whose syscalls are summed at most (beyond it, new
/// ones are not counted until one goes).
pub const MAX_POD_ROWS: usize = 256;

/// (namespace, pod, container): empty namespace and pod for a container
/// outside any pod, empty container for a pod's own cgroup.
pub type PodKey = (String, String, String);

/// The busiest processes' counts, summed by their pod and container.
#[derive(Debug, Default)]
struct ByPod {
    totals: BTreeMap<PodKey, ProcessSyscalls>,
    /// Whom each process counted last cycle belonged to (a process that
    /// exited after its calls is still named by its pid).
    seen: StdHashMap<u32, Option<PodKey>>,
}

impl ByPod {
    fn add(&mut self, rows: &[(u32, ProcessSyscalls)]) {
        let pods = crate::pods::cache();
        let mut seen = StdHashMap::with_capacity(rows.len());
        for (tgid, counts) in rows {
            // Asked each cycle: a container started a moment ago is named
            // by its pod alone until the runtime's next listing.
            let key = pods
                .resolve_pid(*tgid)
                .map(|who| (who.namespace, who.pod, who.container.unwrap_or_default()))
                .or_else(|| self.seen.get(tgid).cloned().flatten());
            if let Some(key) = &key
                && (self.totals.contains_key(key) || self.totals.len() < MAX_POD_ROWS)
            {
                let total = self.totals.entry(key.clone()).or_default();
                total.calls += counts.calls;
                total.errors += counts.errors;
            }
            seen.insert(*tgid, key);
        }
        self.seen = seen;
        // A pod or container the runtime no longer lists goes (its series
        // with it); while it lists nothing (down, or no runtime), all stay.
        let view = pods.view();
        if !view.pods.is_empty() || !view.podman.is_empty() {
            self.totals.retain(|(namespace, pod, container), _| {
                if pod.is_empty() {
                    view.podman.values().any(|c| c == container)
                } else {
                    view.pods
                        .values()
                        .any(|p| &p.namespace == namespace && &p.name == pod)
                }
            });
        }
    }
}

impl Maps {
    fn read_rows(&self, rows: &mut Vec<SyscallRow>) -> Result<(), MapError> {
        for (id, stats) in (0..).zip(map_batch::per_cpu_array_summed(&self.stats)?) {
            if stats.count > 0 || stats.timed() > 0 {
                rows.push(SyscallRow {
                    id,
                    name: syscall_table::name(id),
                    stats,
                    histogram: false,
                });
            }
        }
        Ok(())
    }

    /// Takes the per-process counts gathered since the last cycle (read,
    /// then removed: each cycle sees its own), keeping the top few. Calls
    /// made between a read and its removal are not counted; this names
    /// processes, it does not account for every call. Empty unless
    /// per-process counting is on: one failed key lookup.
    fn take_processes(&self) -> Vec<(u32, ProcessSyscalls)> {
        let mut processes = self.processes.borrow_mut();
        let keys: Vec<u32> = processes.keys().filter_map(Result::ok).collect();
        let mut rows = Vec::with_capacity(keys.len());
        for tgid in keys {
            if let Ok(values) = processes.get(&tgid, 0) {
                rows.push((tgid, ProcessSyscalls::sum(values.iter())));
            }
            let _ = processes.remove(&tgid);
        }
        rows.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(&b.0)));
        rows.truncate(TOP_PROCESSES);
        if !rows.is_empty() {
            self.by_pod.borrow_mut().add(&rows);
        }
        rows
    }
}

impl Source for Maps {
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        let mut reading = Syscalls {
            stale_starts_removed: self.stale_starts_removed,
            starts_lost: self.starts_lost,
            ..Default::default()
        };
        let error = self.read_rows(&mut reading.rows).err();
        choose_histograms(
            &mut reading.rows,
            &mut self.histograms.borrow_mut(),
            self.latency_histograms,
        );
        reading.processes = self.take_processes();
        reading.by_pod = self
            .by_pod
            .borrow()
            .totals
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        (Arc::new(reading), error)
    }

    /// Parked starts whose thread no longer exists (it died in a way that
    /// skipped sys_exit) would fill the map over months: drop them.
    fn remove_stale(&mut self) {
        let stale: Vec<u32> = self
            .starts
            .keys()
            .filter_map(Result::ok)
            .filter(|tid| !std::path::Path::new(&format!("/proc/{tid}")).exists())
            .collect();
        for tid in stale {
            if self.starts.remove(&tid).is_ok() {
                self.stale_starts_removed += 1;
            }
        }
    }

    fn reconfigure(&mut self, config: &Config) -> Result<Vec<(u32, u64)>, OpenError> {
        let ignored: Vec<u32> = config
            .syscalls
            .slow_ignore
            .iter()
            .filter_map(|name| {
                let id = syscall_table::id(name);
                if id.is_none() {
                    warn!("syscalls.slow_ignore: {name} is not a syscall on this architecture");
                }
                id
            })
            .collect();
        for id in 0..MAX_SYSCALLS {
            let flag = u32::from(ignored.contains(&id));
            self.slow_ignore
                .set(id, flag, 0)
                .map_err(|source| OpenError::Map {
                    name: SLOW_SYSCALL_IGNORE_MAP,
                    source,
                })?;
        }
        self.latency_histograms = config.syscalls.latency_histograms;
        // Lowered at runtime: choose again, the busiest first.
        if self.histograms.get_mut().len() > self.latency_histograms {
            self.histograms.get_mut().clear();
        }
        let on = config.syscalls.enabled;
        let threshold = if on { config.slow_threshold_ns() } else { 0 };
        Ok(vec![
            (CFG_SLOW_SYSCALL_NS, threshold),
            (
                CFG_SYSCALL_SAMPLE_EVERY,
                config.syscalls.latency_sample_every,
            ),
            (
                CFG_SYSCALLS_PER_PROCESS,
                u64::from(on && config.syscalls.per_process),
            ),
        ])
    }

    fn advance(&mut self, counters: &[u64]) -> Result<Vec<(u32, u64)>, MapError> {
        self.starts_lost = counters
            .get(SYSCALL_START_MAP_FULL as usize)
            .copied()
            .unwrap_or(0);
        Ok(Vec::new())
    }
}

/// Per-syscall totals, summed over CPUs.
#[derive(Debug, Clone)]
pub struct SyscallRow {
    pub id: u32,
    pub name: String,
    pub stats: SyscallStats,
    /// Exported with its latency histogram (`syscalls.latency_histograms`).
    pub histogram: bool,
}

/// Marks the rows whose latency histogram is exported: those `chosen`
/// before, then, while fewer than `limit` are, the busiest of the rest by
/// calls so far. A syscall once chosen stays (its series never come and
/// go with its rank).
fn choose_histograms(rows: &mut [SyscallRow], chosen: &mut BTreeSet<u32>, limit: usize) {
    if chosen.len() < limit {
        let mut rest: Vec<&SyscallRow> = rows.iter().filter(|r| !chosen.contains(&r.id)).collect();
        rest.sort_by(|a, b| b.stats.count.cmp(&a.stats.count).then(a.id.cmp(&b.id)));
        let room = limit - chosen.len();
        chosen.extend(rest.iter().take(room).map(|r| r.id));
    }
    for row in rows {
        row.histogram = chosen.contains(&row.id);
    }
}

/// What the syscall maps held in one cycle.
#[derive(Debug, Clone, Default)]
pub struct Syscalls {
    /// The syscalls made at least once.
    pub rows: Vec<SyscallRow>,
    /// While syscalls are counted per process: the processes that made the
    /// most since the previous cycle (pid, calls, failed), busiest first.
    pub processes: Vec<(u32, ProcessSyscalls)>,
    /// Syscalls of the busiest processes by pod and container, summed
    /// since counting per process began (at most [`MAX_POD_ROWS`]).
    pub by_pod: Vec<(PodKey, ProcessSyscalls)>,
    /// Parked starts removed because their thread had exited.
    pub stale_starts_removed: u64,
    /// Starts the full map could not keep (`SYSCALL_START_MAP_FULL`).
    pub starts_lost: u64,
}

impl Syscalls {
    /// Calls made, all syscalls.
    pub fn calls(&self) -> u64 {
        self.rows.iter().map(|r| r.stats.count).sum()
    }

    /// Calls that failed, all syscalls.
    pub fn errors(&self) -> u64 {
        self.rows.iter().map(|r| r.stats.errors).sum()
    }
}

impl Reading for Syscalls {
    fn families(&self, out: &mut Vec<MetricFamily>) {
        let mut calls = Family::new(
            "sonde_syscalls_total",
            "System calls made, by syscall (counted as they return; exit and exit_group at entry)",
            MetricType::COUNTER,
        );
        let mut errors = Family::new(
            "sonde_syscall_errors_total",
            "System calls that returned an error (negative return value), by syscall",
            MetricType::COUNTER,
        );
        let mut latency = Family::new(
            "sonde_syscall_duration_seconds",
            "Time from syscall entry to exit, by syscall (log2 buckets aggregated in the kernel), for the syscalls.latency_histograms busiest when first seen",
            MetricType::HISTOGRAM,
        );
        for row in &self.rows {
            let labels = [("syscall", row.name.as_str())];
            calls.sample(&labels, row.stats.count as f64);
            errors.sample(&labels, row.stats.errors as f64);
            if !row.histogram {
                continue;
            }
            let buckets = log2_buckets(&row.stats.latency_slots);
            latency.histogram(
                &labels,
                &buckets,
                row.stats.timed(),
                row.stats.latency_sum_ns as f64 / 1e9,
            );
        }
        calls.done(out);
        errors.done(out);
        latency.done(out);
        let mut pod_calls = Family::new(
            "sonde_pod_syscalls_total",
            "System calls made by a pod's or container's processes while counted per process (syscalls.per_process), from the 8 busiest processes of each cycle",
            MetricType::COUNTER,
        );
        let mut pod_errors = Family::new(
            "sonde_pod_syscall_errors_total",
            "System calls that failed, of a pod's or container's processes, counted as sonde_pod_syscalls_total",
            MetricType::COUNTER,
        );
        for ((namespace, pod, container), counts) in &self.by_pod {
            let mut labels = Vec::with_capacity(3);
            if !pod.is_empty() {
                labels.push(("namespace", namespace.as_str()));
                labels.push(("pod", pod.as_str()));
            }
            if !container.is_empty() {
                labels.push(("container", container.as_str()));
            }
            pod_calls.sample(&labels, counts.calls as f64);
            pod_errors.sample(&labels, counts.errors as f64);
        }
        pod_calls.done(out);
        pod_errors.done(out);
        let mut stale = Family::new(
            "sonde_syscall_starts_stale_removed_total",
            "In-flight syscall records dropped because their thread had exited without returning",
            MetricType::COUNTER,
        );
        stale.sample(&[], self.stale_starts_removed as f64);
        stale.done(out);
    }

    /// Every call counted, less those whose start the full map lost.
    fn completeness(&self) -> Option<(u64, u32)> {
        Some((
            self.calls().saturating_sub(self.starts_lost),
            SYSCALL_START_MAP_FULL,
        ))
    }

    fn completeness_signal(&self) -> Option<&'static str> {
        Some("syscall_latency")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_name_pods_and_lone_containers() {
        let counts = ProcessSyscalls {
            calls: 7,
            errors: 2,
        };
        let reading = Syscalls {
            by_pod: vec![
                (("shop".into(), "cart".into(), "app".into()), counts),
                ((String::new(), String::new(), "web".into()), counts),
            ],
            ..Default::default()
        };
        let mut out = Vec::new();
        reading.families(&mut out);
        let family = out
            .iter()
            .find(|f| f.name() == "sonde_pod_syscalls_total")
            .unwrap();
        let labels: Vec<Vec<(&str, &str)>> = family
            .get_metric()
            .iter()
            .map(|m| m.get_label().iter().map(|l| (l.name(), l.value())).collect())
            .collect();
        assert!(
            labels
                .iter()
                .any(|l| l.contains(&("pod", "cart")) && l.contains(&("container", "app"))),
            "{labels:?}"
        );
        assert!(labels.contains(&vec![("container", "web")]), "{labels:?}");
        assert!(out.iter().any(|f| f.name() == "sonde_pod_syscall_errors_total"));
    }

    #[test]
    fn the_busiest_syscalls_get_histograms_and_keep_them() {
        let row = |id: u32, count: u64| SyscallRow {
            id,
            name: syscall_table::name(id),
            stats: SyscallStats {
                count,
                ..Default::default()
            },
            histogram: false,
        };
        let mut chosen = BTreeSet::new();
        let mut rows = vec![row(0, 5), row(1, 50), row(2, 20)];
        choose_histograms(&mut rows, &mut chosen, 2);
        let marked = |rows: &[SyscallRow]| -> Vec<u32> {
            rows.iter().filter(|r| r.histogram).map(|r| r.id).collect()
        };
        assert_eq!(marked(&rows), [1, 2]);
        // Syscall 0 overtakes both, and a new one appears: the two chosen
        // stay, nothing is added while the limit is reached.
        let mut rows = vec![row(0, 500), row(1, 60), row(2, 21), row(3, 900)];
        choose_histograms(&mut rows, &mut chosen, 2);
        assert_eq!(marked(&rows), [1, 2]);
        // Room for one more: the busiest of the rest.
        choose_histograms(&mut rows, &mut chosen, 3);
        assert_eq!(marked(&rows), [1, 2, 3]);
        let mut out = Vec::new();
        Syscalls {
            rows,
            ..Default::default()
        }
        .families(&mut out);
        let latency = out
            .iter()
            .find(|f| f.name() == "sonde_syscall_duration_seconds")
            .unwrap();
        let calls = out.iter().find(|f| f.name() == "sonde_syscalls_total").unwrap();
        assert_eq!(latency.get_metric().len(), 3);
        assert_eq!(calls.get_metric().len(), 4);
        // None.
        let mut rows = vec![row(0, 5)];
        choose_histograms(&mut rows, &mut BTreeSet::new(), 0);
        assert_eq!(marked(&rows), Vec::<u32>::new());
    }

    #[test]
    fn families_and_completeness_even_when_nothing_was_called() {
        let mut out = Vec::new();
        Syscalls::default().families(&mut out);
        let names: Vec<&str> = out.iter().map(|f| f.name()).collect();
        assert!(names.contains(&"sonde_syscall_starts_stale_removed_total"));
        assert_eq!(
            Syscalls::default().completeness(),
            Some((0, SYSCALL_START_MAP_FULL))
        );
        let lost = Syscalls {
            rows: vec![SyscallRow {
                id: 0,
                name: "read".into(),
                stats: SyscallStats {
                    count: 10,
                    ..Default::default()
                },
                histogram: true,
            }],
            starts_lost: 3,
            ..Default::default()
        };
        assert_eq!(lost.completeness(), Some((7, SYSCALL_START_MAP_FULL)));
        assert_eq!(lost.calls(), 10);
    }

    #[test]
    fn one_tier_per_hook_setting() {
        let modes: Vec<&str> = TIERS.tiers.iter().map(|t| t.mode).collect();
        assert_eq!(modes, ["raw_tracepoint", "tracepoint"]);
        // The one signal the agent cannot run without.
        let required: Vec<&str> = super::super::ALL
            .iter()
            .filter(|s| s.tiers.required)
            .map(|s| s.name())
            .collect();
        assert_eq!(required, ["syscalls"]);
    }
}
