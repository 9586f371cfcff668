//! Event transport on perf event arrays, for kernels without the BPF ring
//! buffer (before 5.8); built into the second object (`agent-perf`, from
//! main_perf.rs), which user space loads where the ring buffer map type is
//! missing. Same names and signatures as `events.rs`.
//!
//! `bpf_perf_event_output` needs the program's context, which the code that
//! decides to emit an event does not carry. So `emit` builds the event in a
//! per-CPU scratch slot of its ring, and the program's entry point sends it
//! with `flush` before it returns. An event still pending when the next one
//! is emitted (never flushed) and one the perf buffer has no room for are
//! counted as lost, as the ring transport counts a failed reserve.

use agent_common::events::RING_COUNT;
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_CURRENT_CPU,
    helpers::bpf_perf_event_output,
    macros::map,
    maps::{PerCpuArray, PerfEventByteArray},
};

use crate::maps::ring_account;

#[map(name = "SYSCALL_EVENTS")]
static SYSCALL_EVENTS: PerfEventByteArray = PerfEventByteArray::new(0);

#[map(name = "FLOW_EVENTS")]
static FLOW_EVENTS: PerfEventByteArray = PerfEventByteArray::new(0);

#[map(name = "PROCESS_EVENTS")]
static PROCESS_EVENTS: PerfEventByteArray = PerfEventByteArray::new(0);

/// Room for the largest event (a process event: 208 bytes).
const SCRATCH_BYTES: usize = 256;

#[repr(C, align(8))]
pub struct Scratch {
    pending: u64,
    bytes: [u8; SCRATCH_BYTES],
}

/// One slot per ring and CPU.
#[map(name = "EVENT_SCRATCH")]
static EVENT_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(RING_COUNT, 0);

#[inline(always)]
fn array(ring_id: u32) -> &'static PerfEventByteArray {
    match ring_id {
        agent_common::events::RING_SYSCALL => &SYSCALL_EVENTS,
        agent_common::events::RING_FLOW => &FLOW_EVENTS,
        _ => &PROCESS_EVENTS,
    }
}

/// Builds one event for ring `ring_id` in this CPU's scratch slot; the
/// entry point's `flush` sends it.
#[inline(always)]
pub fn emit<T: 'static>(ring_id: u32, fill: impl FnOnce(&mut T)) {
    const { assert!(core::mem::size_of::<T>() <= SCRATCH_BYTES) };
    let Some(slot) = EVENT_SCRATCH.get_ptr_mut(ring_id) else {
        let _ = ring_account(ring_id, true);
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while we run.
    let slot = unsafe { &mut *slot };
    if slot.pending != 0 {
        // The previous event was never flushed: it is lost.
        let _ = ring_account(ring_id, true);
    }
    // SAFETY: the slot is 8-byte aligned and large enough (asserted above);
    // `fill` writes every field.
    fill(unsafe { &mut *slot.bytes.as_mut_ptr().cast::<T>() });
    slot.pending = 1;
}

/// Sends the event `emit` left in this CPU's slot for `ring_id`, if any.
#[inline(always)]
pub fn flush<T: 'static, C: EbpfContext>(ctx: &C, ring_id: u32) {
    let Some(slot) = EVENT_SCRATCH.get_ptr_mut(ring_id) else {
        return;
    };
    // SAFETY: per-CPU slot.
    let slot = unsafe { &mut *slot };
    if slot.pending == 0 {
        return;
    }
    slot.pending = 0;
    let map = core::ptr::from_ref(array(ring_id)).cast_mut().cast();
    // SAFETY: a perf event array map, the program's own context and
    // size_of::<T>() initialised bytes in a map value.
    let ret = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            map,
            BPF_F_CURRENT_CPU,
            slot.bytes.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u64,
        )
    };
    let _ = ring_account(ring_id, ret != 0);
}
