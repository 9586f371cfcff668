//! Maps shared by every hook family: runtime config, diagnostic counters and
//! the event accounting (`RING_STATS`, whichever transport carries the
//! events: `events`), plus the helpers that touch them.

use agent_common::{
    config::CONFIG_LEN,
    counters::COUNTERS_LEN,
    events::{RING_COUNT, RingStats},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_LEN, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[map(name = "RING_STATS")]
pub static RING_STATS: PerCpuArray<RingStats> = PerCpuArray::with_max_entries(RING_COUNT, 0);

#[inline(always)]
pub fn config(index: u32) -> u64 {
    CONFIG.get(index).copied().unwrap_or(0)
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}

/// Counts one event the programs tried to emit on ring `ring_id`, and,
/// if `lost`, that it found no room. Returns this CPU's count of attempts
/// so far (0 if the slot is missing).
#[inline(always)]
pub fn ring_account(ring_id: u32, lost: bool) -> u64 {
    match RING_STATS.get_ptr_mut(ring_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        Some(stats) => unsafe {
            (*stats).produced += 1;
            (*stats).lost += u64::from(lost);
            (*stats).produced
        },
        None => 0,
    }
}
