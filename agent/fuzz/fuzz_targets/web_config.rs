//! The web configuration file (`--web.config.file`, exporter-toolkit's
//! YAML), as WebConfig::load reads it after the file: YAML, unknown and
//! refused keys, bcrypt hashes, headers, TLS versions and client-auth
//! types. Its certificate paths point nowhere, so TLS fails at reading the
//! files.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sonde::http::web_config::WebConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = WebConfig::parse(text, Path::new("/nonexistent/sonde-fuzz/web.yml"));
    }
});
