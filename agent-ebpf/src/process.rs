//! Process lifecycle: exec and exit events (pid, parent, cgroup, comm,
//! file name or exit code) on `sched:sched_process_exec` and
//! `sched:sched_process_exit`, so anomalies and slow syscalls can be
//! attributed to programs. Parent and exit code come from `task_struct`
//! fields at offsets from this kernel's BTF.

use agent_common::{
    counters::{PROCESS_EXEC, PROCESS_EXIT},
    events::{
        COMM_LEN, EVENT_PROCESS_EXEC, EVENT_PROCESS_EXIT, EventHeader, ProcessExecEvent,
        ProcessExitEvent, ProcessInfo, RING_PROCESS,
    },
};
use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel_str_bytes,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm as gen_get_current_comm,
            bpf_get_current_task_btf,
        },
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    events::{emit, flush},
    maps::count,
    member::KernelPtr,
    record::field,
};

/// `task_struct.real_parent`, `.tgid`, `.exit_code` (u32::MAX: unknown).
#[unsafe(no_mangle)]
static TASK_REAL_PARENT_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TASK_EXIT_CODE_OFFSET: Global<u32> = Global::new(u32::MAX);
/// Read only through a typed task (a helper call is cheaper than the probe
/// reads they would take otherwise): `task_struct.pid`, `.comm`,
/// `.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.id`.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TASK_CGROUPS_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static CSS_SET_DFL_CGRP_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static CGROUP_KN_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFFSET: Global<u32> = Global::new(u32::MAX);
/// 1: the current task comes typed from `bpf_get_current_task_btf` (5.11,
/// with the kernel's own BTF), and its members are plain loads.
#[unsafe(no_mangle)]
static TASK_BTF: Global<u32> = Global::new(0);
/// Offset of the `filename` __data_loc field in sched_process_exec.
#[unsafe(no_mangle)]
static TP_EXEC_FILENAME: Global<u32> = Global::new(8);
/// Offset of `pid` in sched_process_exec's record: the exec'ing task's,
/// which exec has made its process's leader, so its tgid. u32::MAX: not in
/// this kernel's format file, asked of the helper.
#[unsafe(no_mangle)]
static TP_EXEC_PID: Global<u32> = Global::new(u32::MAX);
/// Offset of `comm` in sched_process_exit's record (u32::MAX: the helper).
#[unsafe(no_mangle)]
static TP_EXIT_COMM: Global<u32> = Global::new(u32::MAX);

/// The current task, and what the process programs read of it.
impl KernelPtr {
    #[inline(always)]
    fn current_task() -> KernelPtr {
        // SAFETY (both): helpers without preconditions; the verifier drops
        // the branch the read-only global rules out, so a kernel without
        // the typed helper never sees its call.
        if TASK_BTF.load() != 0 {
            KernelPtr {
                addr: unsafe { bpf_get_current_task_btf() } as u64,
                typed: true,
            }
        } else {
            KernelPtr {
                addr: unsafe { bpf_get_current_task() },
                typed: false,
            }
        }
    }

    /// The current task's (pid, tgid): two loads where typed.
    #[inline(always)]
    fn pid_tgid(self) -> (u32, u32) {
        if self.typed
            && let (Some(pid), Some(tgid)) = (
                self.member::<u32>(TASK_PID_OFFSET.load()),
                self.member::<u32>(TASK_TGID_OFFSET.load()),
            )
        {
            return (pid, tgid);
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        (pid_tgid as u32, (pid_tgid >> 32) as u32)
    }

    /// The current task's cgroup id on the default hierarchy, what
    /// `bpf_get_current_cgroup_id` returns: task → cgroups → dfl_cgrp →
    /// kn → id, four loads where typed.
    #[inline(always)]
    fn cgroup_id(self) -> u64 {
        if self.typed
            && let Some(id) = self
                .follow(TASK_CGROUPS_OFFSET.load())
                .follow(CSS_SET_DFL_CGRP_OFFSET.load())
                .follow(CGROUP_KN_OFFSET.load())
                .member::<u64>(KERNFS_NODE_ID_OFFSET.load())
        {
            return id;
        }
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    }

    /// The current task's comm, written in place: two loads where typed.
    #[inline(always)]
    fn comm(self, out: &mut [u8; COMM_LEN]) {
        let at = TASK_COMM_OFFSET.load();
        if self.typed
            && let (Some(low), Some(high)) = (
                self.member::<u64>(at),
                self.member::<u64>(at.wrapping_add(8)),
            )
        {
            // SAFETY: two u64s are sixteen bytes, any pattern a valid
            // [u8; 16].
            *out = unsafe { core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>([low, high]) };
            return;
        }
        current_comm(out);
    }
}

/// Who the current process is, but for its comm; `task` is the current
/// task and `pid` its tgid. The callers take the pid and the comm from the
/// tracepoint's record where it has them: every helper call counts at
/// these hooks (40-60 ns each on the benchmark's VM).
#[inline(always)]
fn fill(info: &mut ProcessInfo, kind: u32, task: KernelPtr, pid: u32) {
    // SAFETY: helpers without preconditions.
    let (now, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    info.header = EventHeader {
        kind,
        cpu,
        ts_ns: now,
    };
    info.pid = pid;
    info.ppid = task
        .follow(TASK_REAL_PARENT_OFFSET.load())
        .member::<u32>(TASK_TGID_OFFSET.load())
        .unwrap_or(0);
    info.cgroup_id = task.cgroup_id();
}

/// The current task's comm, written in place (NUL-terminated; empty if
/// the helper fails). aya's `bpf_get_current_comm` returns the array by
/// value, which zeroes a temporary byte by byte first.
#[inline(always)]
pub fn current_comm(out: &mut [u8; COMM_LEN]) {
    // SAFETY: the helper writes at most COMM_LEN bytes into `out`.
    let ret = unsafe { gen_get_current_comm(out.as_mut_ptr().cast(), COMM_LEN as u32) };
    if ret != 0 {
        out[0] = 0;
    }
}

/// The `comm` field of a record at `at`: two loads from the context where
/// it is at 8 (every kernel's sched_process_exit), a probe read elsewhere.
#[inline(always)]
fn record_comm(ctx: &TracePointContext, at: u32) -> [u8; COMM_LEN] {
    let low = field!(ctx, u64, at, 8).unwrap_or(0);
    let high = field!(ctx, u64, at + 8, 16).unwrap_or(0);
    // SAFETY: two u64s are sixteen bytes, any pattern a valid [u8; 16].
    unsafe { core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>([low, high]) }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sonde_process_exec(ctx: TracePointContext) -> u32 {
    count(PROCESS_EXEC);
    // Offset from this kernel's format file (8 since 3.4).
    let data_loc = field!(&ctx, u32, TP_EXEC_FILENAME.load(), 8).unwrap_or(0);
    let pid_at = TP_EXEC_PID.load();
    let pid = if pid_at == u32::MAX {
        (bpf_get_current_pid_tgid() >> 32) as u32
    } else {
        field!(&ctx, u32, pid_at, 12).unwrap_or(0)
    };
    emit::<ProcessExecEvent>(RING_PROCESS, |event| {
        let task = KernelPtr::current_task();
        fill(&mut event.info, EVENT_PROCESS_EXEC, task, pid);
        task.comm(&mut event.info.comm);
        // The path's bytes after its NUL are never read (zeroing 128
        // bytes costs ~650 instructions: byte stores in LLVM's memset for
        // the BPF target); an empty string if the read fails.
        event.filename[0] = 0;
        // __data_loc: low 16 bits are the offset of the string in the
        // record, high 16 bits its length.
        let src = (ctx.as_ptr() as u64 + u64::from(data_loc & 0xffff)) as *const u8;
        // SAFETY: a NUL-terminated string inside the tracepoint record.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut event.filename) };
    });
    flush::<ProcessExecEvent, _>(&ctx, RING_PROCESS);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sonde_process_exit(ctx: TracePointContext) -> u32 {
    let task = KernelPtr::current_task();
    let (pid, tgid) = task.pid_tgid();
    // One event per process: when its main thread exits.
    if pid != tgid {
        return 0;
    }
    count(PROCESS_EXIT);
    emit::<ProcessExitEvent>(RING_PROCESS, |event| {
        fill(&mut event.info, EVENT_PROCESS_EXIT, task, tgid);
        let comm_at = TP_EXIT_COMM.load();
        if comm_at == u32::MAX {
            task.comm(&mut event.info.comm);
        } else {
            event.info.comm = record_comm(&ctx, comm_at);
        }
        event.exit_code = task
            .member::<u32>(TASK_EXIT_CODE_OFFSET.load())
            .unwrap_or(0);
        event._pad = 0;
    });
    flush::<ProcessExitEvent, _>(&ctx, RING_PROCESS);
    0
}
