//! Reads of a kernel object's member at an offset user space found in this
//! kernel's BTF (a read-only global; `u32::MAX` when it was not found):
//! through the probe helper, or as a plain load where the verifier knows
//! the object's BTF type.

use aya_ebpf::helpers::bpf_probe_read_kernel;

/// A kernel object, and how its members are read. Typed: a pointer the
/// verifier types from the kernel's BTF (what `bpf_get_current_task_btf`
/// returns, or a pointer member loaded from such an object); it checks
/// each member load against the type and makes it fault-tolerant, so a
/// member is a plain load. Untyped: a probe read per member, a helper
/// call each (40-60 ns on the benchmark's VM).
#[derive(Clone, Copy)]
pub struct KernelPtr {
    pub addr: u64,
    pub typed: bool,
}

impl KernelPtr {
    /// The `T` at `offset` (this kernel's, from BTF); None for a null
    /// object, an unknown offset or a failed probe read.
    #[inline(always)]
    pub fn member<T: Copy>(self, offset: u32) -> Option<T> {
        if self.addr == 0 || offset == u32::MAX {
            return None;
        }
        let at = (self.addr + u64::from(offset)) as *const T;
        if self.typed {
            // SAFETY: a typed kernel pointer plus this kernel's offset of a
            // member of type T (or a slice of an array member); the
            // verifier checks the load against the BTF type and turns it
            // into one that tolerates a fault.
            Some(unsafe { core::ptr::read_volatile(at) })
        } else {
            // SAFETY: kernel memory through the probe helper, which
            // tolerates a bad address; the offset is this kernel's.
            unsafe { bpf_probe_read_kernel(at) }.ok()
        }
    }

    /// The object the pointer member at `offset` points to, read the same
    /// way.
    #[inline(always)]
    pub fn follow(self, offset: u32) -> KernelPtr {
        KernelPtr {
            addr: self.member::<u64>(offset).unwrap_or(0),
            typed: self.typed,
        }
    }
}

/// The `T` at `offset` bytes into the kernel object at `base`, probe read;
/// None for a null object, an unknown offset or a failed read.
#[inline(always)]
pub fn member<T: Copy>(base: u64, offset: u32) -> Option<T> {
    KernelPtr {
        addr: base,
        typed: false,
    }
    .member(offset)
}
