//! Process lifecycle: execs and exits of processes, on
//! sched:sched_process_exec and sched:sched_process_exit (kernel side:
//! agent-ebpf's process module). `[process] enabled` turns it on.
//!
//! Each exec and exit is an event (pid, parent, cgroup, comm, file name
//! or exit code) on the process ring, decoded with the other rings'
//! events in `events` (shared: one reader, one decoder per ring, and the
//! churn per parent MAPE-K names a fork storm's parent by). The kernel
//! also counts them in two slots of the shared diagnostic counters
//! (agent-common's `PROCESS_EXEC`, `PROCESS_EXIT`): this module exports
//! them from the collector's read of those counters.

use std::sync::Arc;

use agent_common::counters::{PROCESS_EXEC, PROCESS_EXIT};
use aya::{Ebpf, maps::MapError, util::KernelVersion};
use prometheus::proto::{MetricFamily, MetricType};

use super::{BtfField, Constant, OpenError, Reading, Signal, Source, TracepointField};
use crate::{
    config::Config,
    family::Family,
    probes::{
        btf,
        tiers::{self, Hook, Requires, Tier, TierProgram},
    },
};

/// What its programs' names start with: one of them attached means
/// execs and exits are counted (MAPE-K watches them only then).
pub const PROGRAM_PREFIX: &str = "sonde_process";

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: TRACEPOINT_FIELDS,
    btf_fields: BTF_FIELDS,
    symbols: &[],
    constants: CONSTANTS,
    enabled: |config| config.process.enabled,
    forced_tier: |_| None,
    reads: "process counters",
    open,
};

/// One tier: the sched tracepoints (BPF on tracepoints: 4.7). Exit is its
/// core, so exits are counted whatever the exec program could do; the
/// parent and the exit code need their BTF offsets (0 without them).
const TIERS: tiers::Signal = tiers::Signal {
    name: "processes",
    required: false,
    tiers: &[Tier {
        mode: "tracepoint",
        min_kernel: (4, 7),
        requires: Requires::Tracefs,
        programs: &[
            TierProgram {
                program: "sonde_process_exit",
                hook: Hook::Tracepoint("sched", "sched_process_exit"),
                needs: &[],
                partial_before: None,
            },
            TierProgram {
                program: "sonde_process_exec",
                hook: Hook::Tracepoint("sched", "sched_process_exec"),
                needs: &["TP_EXEC_FILENAME"],
                partial_before: None,
            },
        ],
    }],
};

/// The exec'd path; the pid and the exiting task's comm, read from the
/// record rather than asked of a helper where the format file has them.
const TRACEPOINT_FIELDS: &[TracepointField] = &[
    ("TP_EXEC_FILENAME", "sched", "sched_process_exec", "filename"),
    ("TP_EXEC_PID", "sched", "sched_process_exec", "pid"),
    ("TP_EXIT_COMM", "sched", "sched_process_exit", "comm"),
];

/// Parent (task → real_parent → tgid) and exit code; where the task is
/// typed (`TASK_BTF`), also the pid, comm and cgroup id (task → cgroups →
/// dfl_cgrp → kn → id) that are helper calls otherwise.
const BTF_FIELDS: &[BtfField] = &[
    ("TASK_REAL_PARENT_OFFSET", "task_struct", &["real_parent"]),
    ("TASK_TGID_OFFSET", "task_struct", &["tgid"]),
    ("TASK_EXIT_CODE_OFFSET", "task_struct", &["exit_code"]),
    ("TASK_PID_OFFSET", "task_struct", &["pid"]),
    ("TASK_COMM_OFFSET", "task_struct", &["comm"]),
    ("TASK_CGROUPS_OFFSET", "task_struct", &["cgroups"]),
    ("CSS_SET_DFL_CGRP_OFFSET", "css_set", &["dfl_cgrp"]),
    ("CGROUP_KN_OFFSET", "cgroup", &["kn"]),
    ("KERNFS_NODE_ID_OFFSET", "kernfs_node", &["id"]),
];

/// Whether the kernel types the current task for the programs
/// (`bpf_get_current_task_btf`: 5.11, and only with its own BTF), so that
/// they read its members with plain loads instead of a helper call each.
const CONSTANTS: &[Constant] = &[("TASK_BTF", || {
    u32::from(
        std::path::Path::new(btf::VMLINUX_BTF).exists()
            && KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0)),
    )
})];

/// The counts live in the shared diagnostic counters, which the collector
/// reads every cycle and hands to [`Source::advance`]: no map of its own
/// (a second handle by map id would need CAP_SYS_ADMIN).
fn open(_: &mut Ebpf, _: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Counts::default()))
}

#[derive(Default)]
struct Counts(Processes);

impl Source for Counts {
    fn advance(&mut self, counters: &[u64]) -> Result<Vec<(u32, u64)>, MapError> {
        let slot = |i: u32| counters.get(i as usize).copied().unwrap_or(0);
        self.0 = Processes {
            execs: slot(PROCESS_EXEC),
            exits: slot(PROCESS_EXIT),
        };
        Ok(Vec::new())
    }

    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        (Arc::new(self.0.clone()), None)
    }
}

/// Execs and exits seen in the kernel, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Processes {
    pub execs: u64,
    /// Exits of processes (thread-group leaders).
    pub exits: u64,
}

impl Reading for Processes {
    fn families(&self, out: &mut Vec<MetricFamily>) {
        let mut events = Family::new(
            "sonde_process_events_total",
            "Process lifecycle events seen in the kernel (exec, exit of a process)",
            MetricType::COUNTER,
        );
        events.sample(&[("event", "exec")], self.execs as f64);
        events.sample(&[("event", "exit")], self.exits as f64);
        events.done(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_family_with_both_events_even_when_none() {
        for reading in [
            Processes::default(),
            Processes {
                execs: 50,
                exits: 49,
            },
        ] {
            let mut out = Vec::new();
            reading.families(&mut out);
            let names: Vec<&str> = out.iter().map(|f| f.name()).collect();
            assert_eq!(names, ["sonde_process_events_total"]);
            assert_eq!(out[0].get_metric().len(), 2);
        }
        assert_eq!(Processes::default().completeness(), None);
    }
}
