//! The /proc files Sonde parses: /proc/net/netstat (listen counters),
//! /proc/self/mounts (the cgroup2 root), /proc/self/status (CapEff) and
//! /proc/PID/cgroup. Each parser gets the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sonde::signals::tcp::read_listen_counters(&text);
    let _ = sonde::cgroup::v2_root_in(&text);
    let _ = sonde::probes::capabilities::status_cap_eff(&text);
    let _ = sonde::mapek::monitor::proc_cgroup_v2(&text);
});
