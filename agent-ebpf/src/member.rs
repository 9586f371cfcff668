//! Reads of a kernel object's member at an offset user space found in this
//! kernel's BTF (a read-only global; `u32::MAX` when it was not found).

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// The `T` at `offset` bytes into the kernel object at `base`; None for a
/// null object, an unknown offset or a failed read.
#[inline(always)]
pub fn member<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == u32::MAX {
        return None;
    }
    // SAFETY: kernel memory through the probe helper, which tolerates a
    // bad address; the offset is this kernel's.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}
