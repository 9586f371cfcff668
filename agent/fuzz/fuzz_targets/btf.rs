//! The kernel's BTF (/sys/kernel/btf/vmlinux) and the member lookups the
//! fentry and kprobe tiers make in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::probes::btf::Btf;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data) {
        for (name, member) in [
            ("sock", "__sk_common"),
            ("sock_common", "skc_state"),
            ("tcp_sock", "srtt_us"),
            ("a", "b"),
            ("", ""),
        ] {
            let _ = btf.member_offset(name, member);
        }
    }
});
