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
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::TracePointContext,
};

use crate::maps::count;

#[map(name = "BLOCK_STATS")]
static BLOCK_STATS: PerCpuHashMap<BlockKey, BlockStats> =
    PerCpuHashMap::with_max_entries(MAX_BLOCK_KEYS, 0);

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

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn sonde_block_issue(ctx: TracePointContext) -> u32 {
    // SAFETY (all reads): offsets from this kernel's format file.
    let fields = unsafe {
        (
            ctx.read_at::<u32>(TP_BLK_ISSUE_DEV.load() as usize),
            ctx.read_at::<u64>(TP_BLK_ISSUE_SECTOR.load() as usize),
            ctx.read_at::<u32>(TP_BLK_ISSUE_BYTES.load() as usize),
            ctx.read_at::<[u8; 2]>(TP_BLK_ISSUE_RWBS.load() as usize),
        )
    };
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
    // SAFETY (all reads): offsets from this kernel's format file.
    let fields = unsafe {
        (
            ctx.read_at::<u32>(TP_BLK_DONE_DEV.load() as usize),
            ctx.read_at::<u64>(TP_BLK_DONE_SECTOR.load() as usize),
            ctx.read_at::<i32>(TP_BLK_DONE_ERROR.load() as usize),
        )
    };
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
