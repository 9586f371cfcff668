//! Event transport on BPF ring buffers (Linux 5.8 and later), the default
//! object's. `emit` reserves room, lets the caller write the event in place
//! (no copy through the 512-byte stack) and submits it; `flush` has nothing
//! to do (the perf-event-array transport, `events_perf.rs`, needs it). The
//! same names and signatures in both files let every hook family stay
//! unaware of which one it was built with.

use agent_common::events::{RING_FLOW, RING_SYSCALL};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    macros::map,
    maps::RingBuf,
};

use crate::maps::ring_account;

/// Slow-syscall events. User space resizes it at load (`map_max_entries`).
#[map(name = "SYSCALL_EVENTS")]
static SYSCALL_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// New-flow events. User space resizes it at load (`map_max_entries`).
#[map(name = "FLOW_EVENTS")]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Process exec and exit events. User space resizes it at load.
#[map(name = "PROCESS_EVENTS")]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// The reader is woken once a ring holds this fraction (1/N) of its size,
/// not for every event: at high rates a wake-up per event costs the
/// producer an irq_work and the reader a poll() round trip each. The
/// reader's poll timeout picks up a trickle that never reaches it.
const WAKEUP_FILL_DIVISOR: u64 = 16;

/// The fill is checked on one event in N per CPU, not on every one: its
/// two ring queries are helper calls, measured at 40-60 ns each at exec
/// and exit on the benchmark's VM, where a program makes about ten. A
/// ring passes its threshold by at most N - 1 events per CPU before the
/// wake-up.
const WAKEUP_CHECK_EVERY: u64 = 8;

#[inline(always)]
fn ring(ring_id: u32) -> &'static RingBuf {
    match ring_id {
        RING_SYSCALL => &SYSCALL_EVENTS,
        RING_FLOW => &FLOW_EVENTS,
        _ => &PROCESS_EVENTS,
    }
}

/// Emits one event on ring `ring_id`, counting the attempt and any loss in
/// `RING_STATS[ring_id]`.
#[inline(always)]
pub fn emit<T: 'static>(ring_id: u32, fill: impl FnOnce(&mut T)) {
    let ring = ring(ring_id);
    match ring.reserve::<T>(0) {
        Some(mut entry) => {
            let attempts = ring_account(ring_id, false);
            // SAFETY: `fill` writes every field of the event before submit.
            fill(unsafe { entry.assume_init_mut() });
            let wakeup = if attempts.is_multiple_of(WAKEUP_CHECK_EVERY) && past_threshold(ring) {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(u64::from(wakeup));
        }
        None => {
            let _ = ring_account(ring_id, true);
        }
    }
}

/// Whether `ring` holds its wake-up share; counts an event reserved and
/// not yet submitted (already in the producer position the query reads).
#[inline(always)]
fn past_threshold(ring: &RingBuf) -> bool {
    let waiting = ring.query(u64::from(BPF_RB_AVAIL_DATA));
    let size = ring.query(u64::from(BPF_RB_RING_SIZE));
    waiting.saturating_mul(WAKEUP_FILL_DIVISOR) >= size
}

/// Nothing to send: `emit` already submitted.
#[inline(always)]
pub fn flush<T: 'static, C: EbpfContext>(_ctx: &C, _ring_id: u32) {}
