//! Packet drops by the kernel's own drop reason (`skb:kfree_skb`).

/// `PerCpuArray<u64>` indexed by drop reason (`enum skb_drop_reason`).
pub const DROP_REASONS_MAP: &str = "DROP_REASONS";
/// Reasons tracked by value; larger values (subsystem-specific reasons
/// carry high bits) are counted in the last slot.
pub const MAX_DROP_REASONS: u32 = 512;
/// The slot for reasons outside `0..MAX_DROP_REASONS - 1`.
pub const DROP_REASON_OTHER: u32 = MAX_DROP_REASONS - 1;
