//! Block I/O latency on `block_rq_issue` → `block_rq_complete`, per device
//! and operation, with bytes and errors. Two tiers:
//! - raw tracepoints (5.16 and later: `request_queue.disk`), keyed by the
//!   `struct request` pointer their first argument carries. Requests are
//!   preallocated per tag and reused, so a request's entry is rewritten in
//!   place at each issue: no hash insert or delete per I/O (each a bucket
//!   lock and a free-list operation, the classic tier's issue-side cost
//!   measured in `cargo xtask bench`). Device, operation and size are read
//!   from the request at completion (struct offsets from this kernel's BTF);
//! - classic tracepoints, keyed by (device, sector) from their records
//!   (offsets from this kernel's tracepoint formats, the operation from
//!   rwbs).

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
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    maps::count,
    member::member,
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

/// Raw tier: since when each request is in flight (0: not in flight), by
/// `struct request` pointer. The LRU makes room for a request not seen
/// before (a device added, a queue resized) from those unused longest, so
/// an insert does not fail.
#[map(name = "BLOCK_ISSUED")]
static BLOCK_ISSUED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_BLOCK_INFLIGHT, 0);

/// `request.q`, `.cmd_flags`, `.__data_len`, `request_queue.disk`,
/// `gendisk.major`, `.first_minor` (from BTF; u32::MAX: unknown).
#[unsafe(no_mangle)]
static REQUEST_Q_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static REQUEST_CMD_FLAGS_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static REQUEST_DATA_LEN_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static QUEUE_DISK_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static GENDISK_MAJOR_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static GENDISK_FIRST_MINOR_OFFSET: Global<u32> = Global::new(u32::MAX);

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

/// `blk_opf_t`: the operation in the low 8 bits (REQ_OP_READ 0, WRITE 1,
/// FLUSH 2, DISCARD 3, SECURE_ERASE 5) and `__REQ_PREFLUSH` as bit 18, as
/// in every kernel since 4.10.
const REQ_OP_MASK: u32 = 0xff;
const REQ_PREFLUSH: u32 = 1 << 18;

/// The operation from a request's flags, as `op` reads it from the rwbs
/// the kernel writes from them (blk_fill_rwbs: "F" for a preflush, then
/// the operation's letter).
#[inline(always)]
fn op_of_flags(flags: u32) -> u32 {
    let op = flags & REQ_OP_MASK;
    if flags & REQ_PREFLUSH != 0 {
        // "FW…" is a write; "F" before anything else, a flush.
        return if op == 1 {
            BLOCK_OP_WRITE
        } else {
            BLOCK_OP_FLUSH
        };
    }
    match op {
        0 => BLOCK_OP_READ,
        1 => BLOCK_OP_WRITE,
        2 => BLOCK_OP_FLUSH,
        3 | 5 => BLOCK_OP_DISCARD,
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
    record(
        BlockKey { dev, op: start.op },
        start.bytes,
        error != 0,
        latency,
    );
    0
}

/// Adds a completed request to its (device, operation) statistics.
#[inline(always)]
fn record(key: BlockKey, bytes: u32, failed: bool, latency: u64) {
    let stats = match BLOCK_STATS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            let _ = BLOCK_STATS.insert(key, BlockStats::default(), u64::from(BPF_NOEXIST));
            match BLOCK_STATS.get_ptr_mut(key) {
                Some(stats) => stats,
                None => {
                    count(BLOCK_MAP_FULL);
                    return;
                }
            }
        }
    };
    // SAFETY: this CPU's value.
    let stats = unsafe { &mut *stats };
    stats.requests += 1;
    stats.bytes += u64::from(bytes);
    if failed {
        stats.errors += 1;
    }
    stats.sum_ns += latency;
    if let Some(slot) = stats.slots.get_mut(latency_slot(latency)) {
        *slot += 1;
    }
}

/// `struct request`'s first 48 bytes as every kernel with the raw tier
/// (5.16) lays them out: the queue, the flags and the size in one read
/// where this kernel's BTF puts them at 0, 24 and 44.
#[repr(C)]
#[derive(Clone, Copy)]
struct RequestHead {
    q: u64,
    mq_ctx: u64,
    mq_hctx: u64,
    cmd_flags: u32,
    rq_flags: u32,
    tag: i32,
    internal_tag: i32,
    timeout: u32,
    data_len: u32,
}

/// The request's (queue, cmd_flags, __data_len): one probe read where the
/// layout is [`RequestHead`]'s, one per field otherwise (0 where unread).
/// Every read is a helper call (40-60 ns on the benchmark's VM).
#[inline(always)]
fn request_fields(rq: u64) -> (u64, u32, u32) {
    let (q, flags, len) = (
        REQUEST_Q_OFFSET.load(),
        REQUEST_CMD_FLAGS_OFFSET.load(),
        REQUEST_DATA_LEN_OFFSET.load(),
    );
    // The verifier drops the branch the read-only globals rule out.
    if (q, flags, len) == (0, 24, 44) {
        return member::<RequestHead>(rq, 0)
            .map(|h| (h.q, h.cmd_flags, h.data_len))
            .unwrap_or((0, 0, 0));
    }
    (
        member::<u64>(rq, q).unwrap_or(0),
        member::<u32>(rq, flags).unwrap_or(0),
        member::<u32>(rq, len).unwrap_or(0),
    )
}

/// The disk's (major, first_minor): one read where they open `gendisk`, as
/// on every kernel so far; (0, 0) for no disk.
#[inline(always)]
fn disk_numbers(disk: u64) -> (u32, u32) {
    let (major, minor) = (
        GENDISK_MAJOR_OFFSET.load(),
        GENDISK_FIRST_MINOR_OFFSET.load(),
    );
    if (major, minor) == (0, 4) {
        return member::<[u32; 2]>(disk, 0)
            .map(|[major, minor]| (major, minor))
            .unwrap_or((0, 0));
    }
    (
        member::<u32>(disk, major).unwrap_or(0),
        member::<u32>(disk, minor).unwrap_or(0),
    )
}

/// block_rq_issue(struct request *rq) (5.11 and later).
#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn sonde_block_issue_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(start) = BLOCK_ISSUED.get_ptr_mut(rq) {
        // SAFETY: the entry's value; a request is issued and completed
        // one at a time, so nothing else writes it meanwhile.
        unsafe { *start = now };
    } else if BLOCK_ISSUED.insert(rq, now, 0).is_err() {
        count(BLOCK_START_MAP_FULL);
    }
    0
}

/// block_rq_complete(struct request *rq, blk_status_t error, unsigned
/// int nr_bytes); the request's device, flags and size are still its
/// own here (the tracepoint runs before the completion updates them).
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn sonde_block_complete_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let error: u64 = ctx.arg(1);
    let Some(entry) = BLOCK_ISSUED.get_ptr_mut(rq) else {
        return 0;
    };
    // SAFETY: the entry's value (see the issue side). A partial
    // completion takes it; the rest of the request is not timed again,
    // as in the classic tier, whose sector key no longer matches then.
    let start = unsafe { core::mem::replace(&mut *entry, 0) };
    if start == 0 {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(start);
    let (q, flags, bytes) = request_fields(rq);
    // The whole disk's dev_t as the classic record has it (MKDEV: major
    // << 20 | minor); 0 for a request without a disk, as there.
    let disk = member::<u64>(q, QUEUE_DISK_OFFSET.load()).unwrap_or(0);
    let (major, minor) = disk_numbers(disk);
    record(
        BlockKey {
            dev: (major << 20) | (minor & 0xf_ffff),
            op: op_of_flags(flags),
        },
        bytes,
        error as u8 != 0,
        latency,
    );
    0
}
