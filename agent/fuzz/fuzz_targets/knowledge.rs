//! The MAPE-K knowledge file (state directory), as Knowledge::load reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sonde::mapek::knowledge::parse(data);
});
