//! Run-queue latency: how long runnable tasks wait for a CPU, woken or
//! preempted → running (kernel side: agent-ebpf's sched module; types in
//! agent-common's `sched`). `[runqueue] enabled` turns it on, `hook`
//! forces a tier.
//!
//! Per cgroup too (`runqueue.top_cgroups`, raw_tracepoint tier only: the
//! classic records name no cgroup): the kernel keeps every waiting
//! cgroup's histogram, cumulative; the `top_cgroups` that waited longest
//! in all are exported, named by their v2 path, and MAPE-K names the one
//! that waited most in a cycle from the totals of all.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    sync::Arc,
};

use agent_common::{
    config::CFG_RUNQ_PER_CGROUP,
    counters::RUNQ_MAP_FULL,
    merge::Merge,
    sched::{RUNQ_CGROUP_SLOTS_MAP, RUNQ_CGROUPS_MAP, RUNQ_STATS_MAP, RunqCgroupSlot, RunqStats},
};
use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap},
    util::KernelVersion,
};
use prometheus::proto::{MetricFamily, MetricType};

use super::{BtfField, Constant, OpenError, Reading, Signal, Source, TracepointField, take};
use crate::{
    map_batch,
    config::Config,
    family::{Family, log2_buckets},
    probes::tiers::{self, Hook, Requires, Tier, TierProgram},
};

/// What its programs' names start with: one of them attached means
/// run-queue waits are measured (MAPE-K watches them only then).
pub const PROGRAM_PREFIX: &str = "sonde_runq";

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: TRACEPOINT_FIELDS,
    btf_fields: BTF_FIELDS,
    symbols: &[],
    constants: CONSTANTS,
    enabled: |config| config.runqueue.enabled,
    forced_tier: |config| (config.runqueue.hook != "auto").then_some(config.runqueue.hook.as_str()),
    reads: "run-queue latency",
    open,
};

/// Wakeup or preemption → running.
const TIERS: tiers::Signal = tiers::Signal {
    name: "runqueue",
    required: false,
    tiers: &[
        Tier {
            mode: "raw_tracepoint",
            min_kernel: (4, 17),
            requires: Requires::RawTracepointsAndBtf,
            programs: &[
                TierProgram {
                    program: "sonde_runq_switch_raw",
                    hook: Hook::RawTracepoint("sched_switch"),
                    needs: &["TASK_STATE_OFFSET"],
                    partial_before: None,
                },
                TierProgram {
                    program: "sonde_runq_wakeup_raw",
                    hook: Hook::RawTracepoint("sched_wakeup"),
                    needs: &[],
                    partial_before: None,
                },
                TierProgram {
                    program: "sonde_runq_wakeup_raw",
                    hook: Hook::RawTracepoint("sched_wakeup_new"),
                    needs: &[],
                    partial_before: None,
                },
            ],
        },
        Tier {
            mode: "tracepoint",
            min_kernel: (4, 7),
            requires: Requires::Tracefs,
            programs: &[
                TierProgram {
                    program: "sonde_runq_switch_tp",
                    hook: Hook::Tracepoint("sched", "sched_switch"),
                    needs: &[
                        "TP_SWITCH_PREV_PID",
                        "TP_SWITCH_PREV_STATE",
                        "TP_SWITCH_NEXT_PID",
                    ],
                    partial_before: None,
                },
                TierProgram {
                    program: "sonde_runq_wakeup_tp",
                    hook: Hook::Tracepoint("sched", "sched_wakeup"),
                    needs: &["TP_WAKEUP_PID"],
                    partial_before: None,
                },
                // The same program: only where sched_wakeup_new's record
                // puts `pid` where sched_wakeup's does (TP_WAKEUP_PID is
                // listed for both below; the loader checks they agree).
                TierProgram {
                    program: "sonde_runq_wakeup_tp",
                    hook: Hook::Tracepoint("sched", "sched_wakeup_new"),
                    needs: &["TP_WAKEUP_PID"],
                    partial_before: None,
                },
            ],
        },
    ],
};

const TRACEPOINT_FIELDS: &[TracepointField] = &[
    ("TP_WAKEUP_PID", "sched", "sched_wakeup", "pid"),
    ("TP_WAKEUP_PID", "sched", "sched_wakeup_new", "pid"),
    ("TP_SWITCH_PREV_PID", "sched", "sched_switch", "prev_pid"),
    (
        "TP_SWITCH_PREV_STATE",
        "sched",
        "sched_switch",
        "prev_state",
    ),
    ("TP_SWITCH_NEXT_PID", "sched", "sched_switch", "next_pid"),
];

const BTF_FIELDS: &[BtfField] = &[
    // Read only before 5.18 (SWITCH_STATE_ARG); `state` became `__state`
    // in 5.14.
    ("TASK_STATE_OFFSET", "task_struct", &["__state", "state"]),
];

/// sched_switch passes `prev_state` as an argument since 5.18; before,
/// the program reads it from the task.
const CONSTANTS: &[Constant] = &[("SWITCH_STATE_ARG", || {
    u32::from(
        KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(5, 18, 0)),
    )
})];

fn open(ebpf: &mut Ebpf, config: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Maps {
        stats: take(ebpf, RUNQ_STATS_MAP)?,
        cgroups: take(ebpf, RUNQ_CGROUPS_MAP)?,
        slots: take(ebpf, RUNQ_CGROUP_SLOTS_MAP)?,
        // Not reloadable: what the agent started with.
        top_cgroups: if config.runqueue.enabled {
            config.runqueue.top_cgroups
        } else {
            0
        },
        paths: RefCell::default(),
        // Hotplug is rare and a wrong count only scales one feature.
        cpus: aya::util::online_cpus().map_or(1, |c| c.len().max(1)),
    }))
}

struct Maps {
    stats: PerCpuArray<MapData, RunqStats>,
    cgroups: PerCpuHashMap<MapData, u64, RunqStats>,
    /// The same, for the cgroups holding a slot of a CPU.
    slots: PerCpuArray<MapData, RunqCgroupSlot>,
    /// Cgroups exported (0: none, and none read).
    top_cgroups: usize,
    /// cgroup id → path (None: not found by the last walk, retried at
    /// the next sweep), for the ids in the per-cgroup map.
    paths: RefCell<HashMap<u64, Option<String>>>,
    cpus: usize,
}

impl Maps {
    /// The `top_cgroups` cgroups with the most waiting in all, named by
    /// path (one walk of /sys/fs/cgroup for ids not seen yet).
    fn read_cgroups(&self, reading: &mut RunQueue) {
        if self.top_cgroups == 0 {
            return;
        }
        let mut by_id: HashMap<u64, RunqStats> = HashMap::new();
        // A read error leaves the slots' waits: this is the top few.
        for (id, stats) in map_batch::per_cpu_hash_summed(&self.cgroups).unwrap_or_default() {
            by_id.entry(id).or_default().merge(&stats);
        }
        for values in self.slots.iter().filter_map(Result::ok) {
            for slot in values.iter().filter(|slot| slot.id != 0) {
                by_id.entry(slot.id).or_default().merge(&slot.stats);
            }
        }
        let mut rows: Vec<(u64, RunqStats)> = by_id.into_iter().collect();
        let live: HashSet<u64> = rows.iter().map(|(id, _)| *id).collect();
        let mut paths = self.paths.borrow_mut();
        paths.retain(|id, _| live.contains(id));
        reading.cgroup_totals = rows
            .iter()
            .map(|(id, stats)| CgroupTotals {
                id: *id,
                wait_ns: stats.sum_ns,
                waits: stats.samples,
                run_ns: stats.run_ns,
            })
            .collect();
        rows.sort_by(|a, b| b.1.sum_ns.cmp(&a.1.sum_ns).then(a.0.cmp(&b.0)));
        rows.truncate(self.top_cgroups);
        let unknown: HashSet<u64> = rows
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !paths.contains_key(id))
            .collect();
        if !unknown.is_empty() {
            let mut found = crate::cgroup::paths(&unknown);
            for id in unknown {
                paths.insert(id, found.remove(&id));
            }
        }
        reading.cgroups = rows
            .into_iter()
            .map(|(id, stats)| {
                let path = paths.get(&id).and_then(Option::as_ref);
                (crate::cgroup::describe(id, path), stats)
            })
            .collect();
    }
}

impl Source for Maps {
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        let mut reading = RunQueue {
            cpus: self.cpus,
            ..RunQueue::default()
        };
        let error = match self.stats.get(&0, 0) {
            Ok(values) => {
                reading.total = RunqStats::sum(values.iter());
                None
            }
            Err(err) => Some(err),
        };
        self.read_cgroups(&mut reading);
        (Arc::new(reading), error)
    }

    /// Cgroup ids not found by the last walk are looked for again.
    fn remove_stale(&mut self) {
        self.paths.get_mut().retain(|_, path| path.is_some());
    }

    fn reconfigure(&mut self, config: &Config) -> Result<Vec<(u32, u64)>, OpenError> {
        Ok(vec![(
            CFG_RUNQ_PER_CGROUP,
            u64::from(config.runqueue.enabled && config.runqueue.top_cgroups > 0),
        )])
    }
}

/// Run-queue waits, summed over CPUs.
#[derive(Debug, Clone, Default)]
pub struct RunQueue {
    /// Every wait measured.
    pub total: RunqStats,
    /// Online CPUs when the signal opened: what waits are shared among
    /// (MAPE-K's waiting-per-CPU feature).
    pub cpus: usize,
    /// The cgroups that waited longest in all (cumulative), longest
    /// first, at most `runqueue.top_cgroups`: (path, waits).
    pub cgroups: Vec<(String, RunqStats)>,
    /// Every cgroup in the kernel's per-cgroup map, cumulative; what the
    /// MAPE-K loop names the cgroups of CPU contention from.
    pub cgroup_totals: Vec<CgroupTotals>,
}

/// One cgroup's run-queue totals since it entered the kernel's map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupTotals {
    pub id: u64,
    /// Summed wait for a CPU (ns) and waits.
    pub wait_ns: u64,
    pub waits: u64,
    /// CPU time (ns) of the runs that followed those waits.
    pub run_ns: u64,
}

impl Reading for RunQueue {
    fn families(&self, out: &mut Vec<MetricFamily>) {
        let mut runq = Family::new(
            "sonde_runqueue_latency_seconds",
            "Time runnable tasks waited for a CPU (woken or preempted → running)",
            MetricType::HISTOGRAM,
        );
        let rq = &self.total;
        runq.histogram(
            &[],
            &log2_buckets(&rq.slots),
            rq.samples,
            rq.sum_ns as f64 / 1e9,
        );
        runq.done(out);
        let mut behind = Family::new(
            "sonde_runqueue_wait_behind_task_seconds_total",
            "The part of sonde_runqueue_latency_seconds_sum that runnable tasks waited behind another task (the wait ended with the CPU switching from a task, not from idle): CPU contention among tasks, apart from idle CPUs slow to wake",
            MetricType::COUNTER,
        );
        behind.sample(&[], rq.behind_ns as f64 / 1e9);
        behind.done(out);
        let mut cgroups = Family::new(
            "sonde_runqueue_cgroup_latency_seconds",
            "Time runnable tasks waited for a CPU, by the task's cgroup (v2 path; with its namespace, pod and container when the container runtime names them), for the runqueue.top_cgroups cgroups that waited longest in all",
            MetricType::HISTOGRAM,
        );
        let pods = crate::pods::cache().view();
        for (cgroup, rq) in &self.cgroups {
            // A pod's cgroup also carries its pod, namespace and container
            // (when the runtime named them: `[kubernetes]`); a podman
            // container outside any pod, its container alone.
            let who = pods.resolve(cgroup);
            let mut labels = vec![("cgroup", cgroup.as_str())];
            if let Some(who) = &who {
                if !who.pod.is_empty() {
                    labels.push(("namespace", &who.namespace));
                    labels.push(("pod", &who.pod));
                }
                if let Some(container) = &who.container {
                    labels.push(("container", container));
                }
            }
            cgroups.histogram(
                &labels,
                &log2_buckets(&rq.slots),
                rq.samples,
                rq.sum_ns as f64 / 1e9,
            );
        }
        cgroups.done(out);
    }

    fn completeness(&self) -> Option<(u64, u32)> {
        Some((self.total.samples, RUNQ_MAP_FULL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_completeness() {
        let mut stats = RunqStats {
            samples: 4,
            sum_ns: 4_000,
            ..Default::default()
        };
        stats.slots[10] = 4;
        let reading = RunQueue {
            total: stats,
            cgroups: vec![("/system.slice".to_owned(), stats)],
            cgroup_totals: vec![CgroupTotals {
                id: 7,
                wait_ns: 4_000,
                waits: 4,
                run_ns: 9_000,
            }],
            cpus: 2,
        };
        let mut out = Vec::new();
        reading.families(&mut out);
        let names: Vec<&str> = out.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "sonde_runqueue_latency_seconds",
                "sonde_runqueue_wait_behind_task_seconds_total",
                "sonde_runqueue_cgroup_latency_seconds"
            ]
        );
        assert_eq!(reading.completeness(), Some((4, RUNQ_MAP_FULL)));
        let mut quiet = Vec::new();
        RunQueue::default().families(&mut quiet);
        let names: Vec<&str> = quiet.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "sonde_runqueue_latency_seconds",
                "sonde_runqueue_wait_behind_task_seconds_total"
            ],
            "the histogram and the part behind tasks always, cgroups only when there are some"
        );
    }
}
