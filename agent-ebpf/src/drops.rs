//! Packet drops on `skb:kfree_skb`, counted per CPU by the kernel's drop
//! reason. The reason field's offset comes from this kernel's tracepoint
//! format; kernels before 5.17 have no reason, and every drop is counted
//! under reason 0 ("unknown").

use agent_common::drops::{DROP_REASON_OTHER, MAX_DROP_REASONS};
use aya_ebpf::{
    Global,
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};

#[map(name = "DROP_REASONS")]
static DROP_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_DROP_REASONS, 0);

/// Offset of `reason` in the kfree_skb record; u32::MAX: no such field.
#[unsafe(no_mangle)]
static TP_KFREE_SKB_REASON: Global<u32> = Global::new(u32::MAX);

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn sonde_kfree_skb(ctx: TracePointContext) -> u32 {
    let offset = TP_KFREE_SKB_REASON.load();
    let reason = if offset == u32::MAX {
        0
    } else {
        // SAFETY: offset from this kernel's format file.
        unsafe { ctx.read_at::<u32>(offset as usize) }.unwrap_or(0)
    };
    let slot = if reason < DROP_REASON_OTHER {
        reason
    } else {
        DROP_REASON_OTHER
    };
    if let Some(n) = DROP_REASONS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *n += 1 };
    }
    0
}
