//! Ring-buffer and perf event records as the kernel programs emit them:
//! short, garbage and oversized records included.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, record)) = sonde::events::decode_record(data) {
        // /api/v1/events serialises what was decoded.
        serde_json::to_string(&record).expect("an event serialises");
    }
});
