//! Block I/O latency: N direct (O_DIRECT) 4 KiB writes to a loop device the
//! test creates, then N direct reads of it, are counted as N write and N
//! read requests of 4 KiB on that device, by each tier (raw tracepoints
//! keyed by request, classic tracepoints keyed by device and sector).

use std::{process::Command, time::Duration};

use sonde_tests::{Agent, Config, Scrape, block::LoopDevice, require_root};

#[test]
fn direct_io_to_a_loop_device_is_timed_per_device_and_op_raw_tracepoint() {
    direct_io_is_timed_per_device_and_op("raw_tracepoint");
}

#[test]
fn direct_io_to_a_loop_device_is_timed_per_device_and_op_tracepoint() {
    direct_io_is_timed_per_device_and_op("tracepoint");
}

fn direct_io_is_timed_per_device_and_op(hook: &str) {
    if !require_root() {
        return;
    }
    const N: u64 = 200;
    let config = Config::new().set("block", "hook", &format!("{hook:?}"));
    let agent = Agent::start(&config.render(), &[]);
    agent
        .metrics()
        .assert_attached_in_mode("sonde_block_issue", hook);
    let disk = LoopDevice::new("block");
    let device = disk.device();
    for (op, input, output, direct) in [
        (
            "write",
            "if=/dev/zero".to_string(),
            format!("of={device}"),
            "oflag=direct",
        ),
        (
            "read",
            format!("if={device}"),
            "of=/dev/null".to_string(),
            "iflag=direct",
        ),
    ] {
        let labels = [("device", disk.name()), ("op", op)];
        let requests =
            |s: &Scrape| s.value_or_zero("sonde_block_io_duration_seconds_count", &labels);
        let bytes = |s: &Scrape| s.value_or_zero("sonde_block_io_bytes_total", &labels);
        let before = agent.metrics();
        let status = Command::new("dd")
            .args([
                input.as_str(),
                output.as_str(),
                "bs=4096",
                &format!("count={N}"),
                direct,
                "status=none",
            ])
            .status()
            .expect("running dd");
        assert!(status.success(), "dd ({op}) failed");
        agent
            .try_wait_for(Duration::from_secs(5), |s| {
                requests(s) - requests(&before) >= N as f64
            })
            .unwrap_or_else(|last| {
                panic!(
                    "{hook}: {N} direct 4 KiB {op}s on {}: {op} requests rose by {}:\n{}",
                    disk.device(),
                    requests(&last) - requests(&before),
                    last.grep("sonde_block_io")
                )
            });
        let after = agent.wait_stable(
            "block requests",
            Duration::from_secs(5),
            Duration::from_millis(500),
            requests,
        );
        assert_eq!(
            requests(&after) - requests(&before),
            N as f64,
            "{hook}: each O_DIRECT {op} is one request on {}",
            disk.device()
        );
        assert_eq!(
            bytes(&after) - bytes(&before),
            (N * 4096) as f64,
            "{hook}: bytes of the {op}s"
        );
    }
}
