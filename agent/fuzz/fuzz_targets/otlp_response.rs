//! An OTLP/HTTP collector's answer: two bytes of status code, one byte
//! picking the signal, then the body (an Export*ServiceResponse protobuf,
//! or whatever the collector sent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::otlp::{Signal, http_response};

fuzz_target!(|data: &[u8]| {
    let [hi, lo, signal, body @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*hi, *lo]);
    let signal = if signal & 1 == 0 {
        Signal::Metrics
    } else {
        Signal::Logs
    };
    if let Err(err) = http_response(signal, status, body) {
        let _ = err.to_string();
    }
});
