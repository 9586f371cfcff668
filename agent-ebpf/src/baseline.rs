//! Empty programs on the same hooks as Sonde's, for `sonde baseline`: the
//! benchmark's floor ("what does merely hooking cost here?"), measured side
//! by side with the real programs. Never attached by `sonde run`.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, raw_tracepoint, tracepoint, xdp},
    programs::{RawTracePointContext, TcContext, TracePointContext, XdpContext},
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn baseline_sys_enter_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn baseline_sys_exit_raw(_ctx: RawTracePointContext) -> i32 {
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
