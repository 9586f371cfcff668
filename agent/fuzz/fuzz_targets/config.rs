//! The config file and the `SONDE_*` environment overlay: a TOML text,
//! then after a NUL byte one `NAME=VALUE` variable per line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (toml, env) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if let Ok(config) = sonde::config::Config::parse(toml, None, env) {
        // What load accepted, validate accepts again.
        config.validate().expect("a loaded config validates");
    }
});
