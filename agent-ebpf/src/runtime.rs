//! What every `no_std` BPF object needs besides its programs: a panic
//! handler and the license section. Shared by both objects (main.rs and
//! main_perf.rs).

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only exists
    // because `no_std` binaries need a panic handler.
    loop {}
}

/// GPL: the helpers Sonde calls (perf output, probe reads) are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
