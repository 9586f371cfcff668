//! Maps shared by every hook family: runtime config, diagnostic counters and
//! ring-buffer accounting, plus the helpers that touch them.

use agent_common::{
    config::CONFIG_LEN,
    counters::COUNTERS_LEN,
    events::{RING_COUNT, RingStats},
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_LEN, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[map(name = "RING_STATS")]
pub static RING_STATS: PerCpuArray<RingStats> = PerCpuArray::with_max_entries(RING_COUNT, 0);

/// Slow-syscall events. User space resizes it at load (`map_max_entries`).
#[map(name = "SYSCALL_EVENTS")]
pub static SYSCALL_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// New-flow events. User space resizes it at load (`map_max_entries`).
#[map(name = "FLOW_EVENTS")]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Process exec and exit events. User space resizes it at load.
#[map(name = "PROCESS_EVENTS")]
pub static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

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

/// The reader is woken once a ring holds this fraction (1/N) of its size,
/// not for every event: at high rates a wake-up per event costs the
/// producer an irq_work and the reader a poll() round trip each. The
/// reader's poll timeout picks up a trickle that never reaches it.
const WAKEUP_FILL_DIVISOR: u64 = 16;

/// Emits one event on `ring`: reserves room, lets `fill` write the event in
/// place (no copy through the 512-byte stack), and counts the attempt and any
/// loss in `RING_STATS[ring_id]`.
#[inline(always)]
pub fn emit<T: 'static>(ring: &RingBuf, ring_id: u32, fill: impl FnOnce(&mut T)) {
    let stats = RING_STATS.get_ptr_mut(ring_id);
    if let Some(stats) = stats {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { (*stats).produced += 1 };
    }
    match ring.reserve::<T>(0) {
        Some(mut entry) => {
            // SAFETY: `fill` writes every field of the event before submit.
            fill(unsafe { entry.assume_init_mut() });
            // Counts the event being submitted (reserved, so already in
            // the producer position the query reads).
            let waiting = ring.query(u64::from(BPF_RB_AVAIL_DATA));
            let size = ring.query(u64::from(BPF_RB_RING_SIZE));
            let wakeup = if waiting.saturating_mul(WAKEUP_FILL_DIVISOR) >= size {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(u64::from(wakeup));
        }
        None => {
            if let Some(stats) = stats {
                // SAFETY: per-CPU slot.
                unsafe { (*stats).lost += 1 };
            }
        }
    }
}
