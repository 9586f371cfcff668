//! Block I/O latency: request issue → completion, per device and operation.

use crate::syscalls::LATENCY_SLOTS;

/// `PerCpuHashMap<BlockKey, BlockStats>`.
pub const BLOCK_STATS_MAP: &str = "BLOCK_STATS";
/// `HashMap<BlockRequest, BlockStart>`: requests in flight.
pub const BLOCK_START_MAP: &str = "BLOCK_START";
/// (device, operation) pairs tracked.
pub const MAX_BLOCK_KEYS: u32 = 1024;
/// Requests in flight tracked at once by the classic tier; the raw tier's
/// distinct requests (each device's preallocated tags, reused) before its
/// LRU gives the longest unused entry's room to a new one.
pub const MAX_BLOCK_INFLIGHT: u32 = 16384;

pub const BLOCK_OP_OTHER: u32 = 0;
pub const BLOCK_OP_READ: u32 = 1;
pub const BLOCK_OP_WRITE: u32 = 2;
pub const BLOCK_OP_DISCARD: u32 = 3;
pub const BLOCK_OP_FLUSH: u32 = 4;

/// Operation names by id.
pub const BLOCK_OP_NAMES: [&str; 5] = ["other", "read", "write", "discard", "flush"];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Kernel dev_t: major << 20 | minor.
    pub dev: u32,
    pub op: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    pub dev: u32,
    pub _pad: u32,
    pub sector: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockStart {
    pub ts_ns: u64,
    pub bytes: u32,
    pub op: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockStats {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub sum_ns: u64,
    pub slots: [u64; LATENCY_SLOTS],
}
