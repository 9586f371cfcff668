//! Tracepoint format files (/sys/kernel/tracing/events/*/*/format): field
//! offsets and `__print_symbolic` names. The field asked for is the
//! input's first line, the rest the format text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::probes::capabilities::{format_field_offset, format_symbols};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (field, format) = text.split_once('\n').unwrap_or(("", &text));
    for field in [field, "reason", "ret", "id", "skbaddr"] {
        let _ = format_field_offset(format, field);
        let _ = format_symbols(format, field);
    }
});
