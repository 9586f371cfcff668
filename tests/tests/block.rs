//! Block I/O latency: N direct (O_DIRECT) 4 KiB writes to a loop device the
//! test creates are counted as N write requests of 4 KiB on that device.

use std::{process::Command, time::Duration};

use sonde_tests::{Agent, Config, Scrape, require_root};

/// A loop device over a temporary file, detached and removed on drop.
struct LoopDevice {
    device: String,
    file: std::path::PathBuf,
}

impl LoopDevice {
    fn new() -> LoopDevice {
        let file = std::env::temp_dir().join(format!("sonde-block-{}", std::process::id()));
        std::fs::write(&file, vec![0u8; 8 << 20]).expect("creating the backing file");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .expect("running losetup");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        LoopDevice { device, file }
    }

    fn name(&self) -> &str {
        self.device.trim_start_matches("/dev/")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
fn direct_writes_to_a_loop_device_are_timed_per_device_and_op() {
    if !require_root() {
        return;
    }
    const N: u64 = 200;
    let agent = Agent::start(&Config::new().render(), &[]);
    let disk = LoopDevice::new();
    let labels = [("device", disk.name()), ("op", "write")];
    let requests = |s: &Scrape| s.value_or_zero("sonde_block_io_duration_seconds_count", &labels);
    let bytes = |s: &Scrape| s.value_or_zero("sonde_block_io_bytes_total", &labels);
    let before = agent.metrics();
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", disk.device),
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
                disk.device,
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
        disk.device
    );
    assert_eq!(bytes(&after) - bytes(&before), (N * 4096) as f64);
}
