//! Block I/O latency on `block:block_rq_issue` → `block:block_rq_complete`,
//! per device and operation (from the request's rwbs flags), with bytes and
//! errors. Record offsets come from this kernel's tracepoint formats.

use agent_common::{
    block::{
        BLOCK_OP_DISCARD, BLOCK_OP_FLUSH, BLOCK_OP_OTHER, BLOCK_OP_READ, BLOCK_OP_WRITE, BlockKey,
        BlockRequest, BlockStart, BlockStats, MAX_BLOCK_INFLIGHT, MAX_BLOCK_KEYS,
    },
    counters::{BLOCK_MAP_FULL, BLOCK_START_MAP_FULL},
    syscalls::latency_slot,
};
use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::TracePointContext,
};

use crate::{
    maps::count,
    record::{field, load_at, probe},
};

/// Entries are allocated as keys appear (`BPF_F_NO_PREALLOC`): preallocated,
/// every possible key's per-CPU values would be reserved on every CPU
/// (248 KiB per CPU, 62 MiB on a 256-CPU node) for the few keys most
/// nodes use. Lookups cost the same; only a new key allocates.
#[map(name = "BLOCK_STATS")]
static BLOCK_STATS: PerCpuHashMap<BlockKey, BlockStats> =
    PerCpuHashMap::with_max_entries(MAX_BLOCK_KEYS, BPF_F_NO_PREALLOC);

#[map(name = "BLOCK_START")]
static BLOCK_START: HashMap<BlockRequest, BlockStart> =
    HashMap::with_max_entries(MAX_BLOCK_INFLIGHT, 0);

#[unsafe(no_mangle)]
static TP_BLK_ISSUE_DEV: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static TP_BLK_ISSUE_SECTOR: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static TP_BLK_ISSUE_BYTES: Global<u32> = Global::new(28);
#[unsafe(no_mangle)]
static TP_BLK_ISSUE_RWBS: Global<u32> = Global::new(34);
#[unsafe(no_mangle)]
static TP_BLK_DONE_DEV: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static TP_BLK_DONE_SECTOR: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static TP_BLK_DONE_ERROR: Global<u32> = Global::new(28);

/// The operation from the first letters of rwbs ("R", "W", "D", "F", "FWS"…).
#[inline(always)]
fn op(rwbs: [u8; 2]) -> u32 {
    match rwbs[0] {
        b'R' => BLOCK_OP_READ,
        b'W' => BLOCK_OP_WRITE,
        b'D' => BLOCK_OP_DISCARD,
        // A flush ahead of a write ("FWS") is a write.
        b'F' if rwbs[1] == b'W' => BLOCK_OP_WRITE,
        b'F' => BLOCK_OP_FLUSH,
        _ => BLOCK_OP_OTHER,
    }
}

/// The first two letters of rwbs, at `offset` in the issue record: 32
/// before ioprio was added in front of it (6.5), 34 since. Both from one
/// load of the word at 32 (two loads at either offset would be merged by
/// LLVM into one at a variable offset, which the verifier refuses).
#[inline(always)]
fn rwbs(ctx: &TracePointContext, offset: u32) -> Result<[u8; 2], i32> {
    if offset == 32 || offset == 34 {
        // SAFETY: rwbs lies at 32..40 or 34..44 in the record.
        let word: u64 = unsafe { load_at::<u64, 32>(ctx) };
        let shift = (offset - 32) * 8;
        Ok([(word >> shift) as u8, (word >> (shift + 8)) as u8])
    } else {
        // SAFETY: the offset this kernel's format file gave.
        unsafe { probe::<[u8; 2]>(ctx, offset as usize) }
    }
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn sonde_block_issue(ctx: TracePointContext) -> u32 {
    // Offsets from this kernel's format file; the known ones are those
    // of every kernel since 4.x.
    let fields = (
        field!(&ctx, u32, TP_BLK_ISSUE_DEV.load(), 8),
        field!(&ctx, u64, TP_BLK_ISSUE_SECTOR.load(), 16),
        field!(&ctx, u32, TP_BLK_ISSUE_BYTES.load(), 28),
        rwbs(&ctx, TP_BLK_ISSUE_RWBS.load()),
    );
    let (Ok(dev), Ok(sector), Ok(bytes), Ok(rwbs)) = fields else {
        return 0;
    };
    let request = BlockRequest {
        dev,
        _pad: 0,
        sector,
    };
    let start = BlockStart {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        bytes,
        op: op(rwbs),
    };
    if BLOCK_START.insert(request, start, 0).is_err() {
        count(BLOCK_START_MAP_FULL);
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn sonde_block_complete(ctx: TracePointContext) -> u32 {
    // Offsets from this kernel's format file (see the issue side).
    let fields = (
        field!(&ctx, u32, TP_BLK_DONE_DEV.load(), 8),
        field!(&ctx, u64, TP_BLK_DONE_SECTOR.load(), 16),
        field!(&ctx, i32, TP_BLK_DONE_ERROR.load(), 28),
    );
    let (Ok(dev), Ok(sector), Ok(error)) = fields else {
        return 0;
    };
    let request = BlockRequest {
        dev,
        _pad: 0,
        sector,
    };
    let Some(start) = BLOCK_START.get_ptr(request) else {
        return 0;
    };
    // SAFETY: from a successful lookup, copied before the delete.
    let start = unsafe { *start };
    let _ = BLOCK_START.remove(request);
    // SAFETY: helper without preconditions.
    let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns);
    let key = BlockKey { dev, op: start.op };
    let stats = match BLOCK_STATS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            let _ = BLOCK_STATS.insert(key, BlockStats::default(), u64::from(BPF_NOEXIST));
            match BLOCK_STATS.get_ptr_mut(key) {
                Some(stats) => stats,
                None => {
                    count(BLOCK_MAP_FULL);
                    return 0;
                }
            }
        }
    };
    // SAFETY: this CPU's value.
    let stats = unsafe { &mut *stats };
    stats.requests += 1;
    stats.bytes += u64::from(start.bytes);
    if error != 0 {
        stats.errors += 1;
    }
    stats.sum_ns += latency;
    if let Some(slot) = stats.slots.get_mut(latency_slot(latency)) {
        *slot += 1;
    }
    0
}
