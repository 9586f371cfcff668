//! Block I/O latency: N direct (O_DIRECT) 4 KiB writes to a loop device the
//! test creates are counted as N write requests of 4 KiB on that device.

use std::{process::Command, time::Duration};

use sonde_tests::{Agent, Config, Scrape, block::LoopDevice, require_root};

#[test]
fn direct_writes_to_a_loop_device_are_timed_per_device_and_op() {
    if !require_root() {
        return;
    }
    const N: u64 = 200;
    let agent = Agent::start(&Config::new().render(), &[]);
    let disk = LoopDevice::new("block");
    let labels = [("device", disk.name()), ("op", "write")];
    let requests = |s: &Scrape| s.value_or_zero("sonde_block_io_duration_seconds_count", &labels);
    let bytes = |s: &Scrape| s.value_or_zero("sonde_block_io_bytes_total", &labels);
    let before = agent.metrics();
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", disk.device()),
            "bs=4096",
            &format!("count={N}"),
            "oflag=direct",
            "status=none",
        ])
        .status()
        .expect("running dd");
    assert!(status.success(), "dd failed");
    agent
        .try_wait_for(Duration::from_secs(5), |s| {
            requests(s) - requests(&before) >= N as f64
        })
        .unwrap_or_else(|last| {
            panic!(
                "{N} direct 4 KiB writes to {}: write requests rose by {}:\n{}",
                disk.device(),
                requests(&last) - requests(&before),
                last.grep("sonde_block_io")
            )
        });
    let after = agent.wait_stable(
        "block writes",
        Duration::from_secs(5),
        Duration::from_millis(500),
        requests,
    );
    assert_eq!(
        requests(&after) - requests(&before),
        N as f64,
        "each O_DIRECT write is one request on {}",
        disk.device()
    );
    assert_eq!(bytes(&after) - bytes(&before), (N * 4096) as f64);
}
