//! Reads from a classic tracepoint's record at an offset user space found
//! in this kernel's format file (a read-only global, so a constant the
//! verifier knows). A load straight from the context costs nothing; a
//! `bpf_probe_read_kernel` (what aya's `read_at` does) costs a helper call
//! and a fault-tolerant copy, measured at ~150 ns per field on a loaded
//! VM. The verifier only accepts context loads at an offset fixed in the
//! instruction, so the offset kernels use for a field gets a load of its
//! own; the verifier drops the branch the global rules out (privileged
//! programs: dead code is removed), so only that load runs. Any other
//! offset (a kernel whose record layout was not foreseen) falls back to
//! the probe read.

use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_kernel, programs::TracePointContext};

/// Reads a `T` at `offset` into the record: a direct load when `offset`
/// is `$known` (the offset kernels use for the field), a probe read
/// otherwise. One known offset only: LLVM merges two direct loads into one
/// at a variable offset, which the verifier refuses.
macro_rules! field {
    ($ctx:expr, $ty:ty, $offset:expr, $known:literal) => {{
        let ctx: &aya_ebpf::programs::TracePointContext = $ctx;
        let offset = $offset as usize;
        if offset == $known {
            // SAFETY: the offset this kernel's format file gave for the
            // field, within the record.
            Ok::<$ty, i32>(unsafe { $crate::record::load_at::<$ty, $known>(ctx) })
        } else {
            // SAFETY: as above.
            unsafe { $crate::record::probe::<$ty>(ctx, offset) }
        }
    }};
}
pub(crate) use field;

/// A `T` loaded from the record at a fixed offset (what [`field`] runs
/// for a known offset). `T` must be aligned in the record: the verifier
/// refuses misaligned context loads.
///
/// # Safety
/// `OFFSET` must lie inside the record and be a multiple of `T`'s size.
#[inline(always)]
pub unsafe fn load_at<T: Copy, const OFFSET: usize>(ctx: &TracePointContext) -> T {
    // SAFETY: per the caller.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(OFFSET).cast::<T>()) }
}

/// The fallback: a probe read of a `T` at `offset` into the record.
///
/// # Safety
/// `offset` must lie inside the record.
#[inline(always)]
pub unsafe fn probe<T: Copy>(ctx: &TracePointContext, offset: usize) -> Result<T, i32> {
    // SAFETY: per the caller; the helper tolerates a bad address.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}
