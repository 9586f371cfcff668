//! The agent's allocator policy: how freed memory goes back to the system.
//! A burst (a flood filling the flow table, loading the kernel's BTF)
//! allocates megabytes that are freed later; glibc keeps freed pages in its
//! arenas unless told otherwise, so RSS would keep each burst's high-water
//! mark. (musl, the container build, returns memory by itself and has
//! neither knob.)

/// Sets the allocator's parameters; call first thing in `main`, before
/// any thread starts.
///
/// glibc raises its mmap threshold to the size of each large buffer freed,
/// so after one burst every later large buffer comes from the heap and its
/// pages stay with the process (+9 MiB in a soak hour). A fixed threshold
/// keeps large buffers in mmaps, returned when freed; two arenas bound
/// per-thread heap fragmentation.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the free pages inside glibc's arenas to the system, after the
/// agent dropped what a burst held. The small allocations a burst made
/// (below the mmap threshold) are freed into an arena, and a live chunk
/// above them keeps the arena from shrinking: a connection storm's 22,000
/// flows left about 1 MiB resident that way after they had expired.
/// `malloc_trim` releases whole free pages anywhere in every arena. It
/// walks the arenas' free lists, so it is for after a burst and for the
/// collector's sweep once a minute, not each cycle.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain libc call with no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
