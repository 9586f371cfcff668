//! Empty programs on the same hooks as Sonde's, for `sonde baseline`: the
//! benchmark's floor ("what does merely hooking cost here?"), measured side
//! by side with the real programs. Never attached by `sonde run`.
//!
//! Plus the timing floor (`sonde baseline syscalls --timed`): the least any
//! syscall latency measurement has to do on top of the bare hooks (a clock
//! read on entry, kept; a clock read on exit, the difference added up), to
//! split Sonde's cost into hooking, timing and its own work.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, raw_tracepoint, tracepoint, xdp},
    maps::PerCpuArray,
    programs::{RawTracePointContext, TcContext, TracePointContext, XdpContext},
};

/// The timing floor's state, per CPU: the entry timestamp of the syscall
/// in flight on this CPU, and the sum of the latencies measured. Per CPU
/// like Sonde's own in-flight slot (tracepoints run with preemption
/// disabled); unlike Sonde, nothing follows a thread that leaves the CPU
/// mid-syscall, which the benchmark's loop of short syscalls never does.
#[map(name = "BASELINE_TIMED")]
static BASELINE_TIMED: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Indexes into [`BASELINE_TIMED`].
const TIMED_START: u32 = 0;
const TIMED_SUM: u32 = 1;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn baseline_sys_enter_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn baseline_sys_exit_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn baseline_sys_enter_timed(_ctx: RawTracePointContext) -> i32 {
    if let Some(start) = BASELINE_TIMED.get_ptr_mut(TIMED_START) {
        // SAFETY: this CPU's slot; helper without preconditions.
        unsafe { *start = bpf_ktime_get_ns() };
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn baseline_sys_exit_timed(_ctx: RawTracePointContext) -> i32 {
    let Some(start) = BASELINE_TIMED.get_ptr_mut(TIMED_START) else {
        return 0;
    };
    // SAFETY: this CPU's slot.
    let start = unsafe { *start };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // 0: the syscall entered before we attached; there is no latency to add.
    if start != 0
        && let Some(sum) = BASELINE_TIMED.get_ptr_mut(TIMED_SUM)
    {
        // SAFETY: this CPU's slot. The clock is monotonic: no underflow.
        unsafe { *sum += now.wrapping_sub(start) };
    }
    0
}

#[tracepoint(category = "raw_syscalls", name = "sys_enter")]
pub fn baseline_sys_enter_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn baseline_sys_exit_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[xdp]
pub fn baseline_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn baseline_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}
