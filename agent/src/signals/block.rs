//! Block I/O latency per device and operation: block_rq_issue →
//! block_rq_complete (kernel side: agent-ebpf's block module, types in
//! agent-common's `block`); and, from the kernel's own counters, devices
//! whose requests in flight stopped completing (`crate::diskstats`),
//! which no completion ever times. `[block] enabled` turns it on.

use std::sync::{Arc, Mutex};

use agent_common::{
    block::{BLOCK_OP_NAMES, BLOCK_STATS_MAP, BlockKey, BlockStats},
    counters::BLOCK_START_MAP_FULL,
};
use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuHashMap},
};
use prometheus::proto::{MetricFamily, MetricType};

use super::{BtfField, OpenError, Reading, Signal, Source, TracepointField, take};
use crate::{
    config::Config,
    diskstats::{self, Stall, StallClock},
    map_batch,
    family::{Family, log2_buckets},
    probes::tiers::{self, Hook, Requires, Tier, TierProgram},
};

/// What its programs' names start with: one of them attached means
/// block I/O is timed (MAPE-K watches device latency only then).
pub const PROGRAM_PREFIX: &str = "sonde_block_";

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: TRACEPOINT_FIELDS,
    btf_fields: BTF_FIELDS,
    symbols: &[],
    constants: &[],
    enabled: |config| config.block.enabled,
    forced_tier: |config| (config.block.hook != "auto").then_some(config.block.hook.as_str()),
    reads: "block I/O statistics",
    open,
};

/// Raw tracepoints keyed by request (cheaper: no hash insert and delete
/// per I/O; 5.16 gave `request_queue` its `disk`), then the classic
/// tracepoints keyed by (device, sector) (stable since 4.7).
const TIERS: tiers::Signal = tiers::Signal {
    name: "block",
    required: false,
    tiers: &[
        Tier {
            mode: "raw_tracepoint",
            min_kernel: (5, 16),
            requires: Requires::RawTracepointsAndBtf,
            programs: &[
                TierProgram {
                    program: "sonde_block_complete_raw",
                    hook: Hook::RawTracepoint("block_rq_complete"),
                    needs: &[
                        "REQUEST_Q_OFFSET",
                        "REQUEST_CMD_FLAGS_OFFSET",
                        "REQUEST_DATA_LEN_OFFSET",
                        "QUEUE_DISK_OFFSET",
                        "GENDISK_MAJOR_OFFSET",
                        "GENDISK_FIRST_MINOR_OFFSET",
                    ],
                    partial_before: None,
                },
                TierProgram {
                    program: "sonde_block_issue_raw",
                    hook: Hook::RawTracepoint("block_rq_issue"),
                    needs: &[],
                    partial_before: None,
                },
            ],
        },
        Tier {
            mode: "tracepoint",
            min_kernel: (4, 7),
            requires: Requires::Tracefs,
            programs: &[
                TierProgram {
                    program: "sonde_block_complete",
                    hook: Hook::Tracepoint("block", "block_rq_complete"),
                    needs: &["TP_BLK_DONE_DEV", "TP_BLK_DONE_SECTOR", "TP_BLK_DONE_ERROR"],
                    partial_before: None,
                },
                TierProgram {
                    program: "sonde_block_issue",
                    hook: Hook::Tracepoint("block", "block_rq_issue"),
                    needs: &[
                        "TP_BLK_ISSUE_DEV",
                        "TP_BLK_ISSUE_SECTOR",
                        "TP_BLK_ISSUE_BYTES",
                        "TP_BLK_ISSUE_RWBS",
                    ],
                    partial_before: None,
                },
            ],
        },
    ],
};

const BTF_FIELDS: &[BtfField] = &[
    ("REQUEST_Q_OFFSET", "request", &["q"]),
    ("REQUEST_CMD_FLAGS_OFFSET", "request", &["cmd_flags"]),
    ("REQUEST_DATA_LEN_OFFSET", "request", &["__data_len"]),
    ("QUEUE_DISK_OFFSET", "request_queue", &["disk"]),
    ("GENDISK_MAJOR_OFFSET", "gendisk", &["major"]),
    ("GENDISK_FIRST_MINOR_OFFSET", "gendisk", &["first_minor"]),
];

const TRACEPOINT_FIELDS: &[TracepointField] = &[
    ("TP_BLK_ISSUE_DEV", "block", "block_rq_issue", "dev"),
    ("TP_BLK_ISSUE_SECTOR", "block", "block_rq_issue", "sector"),
    ("TP_BLK_ISSUE_BYTES", "block", "block_rq_issue", "bytes"),
    ("TP_BLK_ISSUE_RWBS", "block", "block_rq_issue", "rwbs"),
    ("TP_BLK_DONE_DEV", "block", "block_rq_complete", "dev"),
    ("TP_BLK_DONE_SECTOR", "block", "block_rq_complete", "sector"),
    ("TP_BLK_DONE_ERROR", "block", "block_rq_complete", "error"),
];

fn open(ebpf: &mut Ebpf, _: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Maps {
        stats: take(ebpf, BLOCK_STATS_MAP)?,
        stalls: Mutex::default(),
    }))
}

struct Maps {
    stats: PerCpuHashMap<MapData, BlockKey, BlockStats>,
    stalls: Mutex<StallClock>,
}

impl Maps {
    /// Every whole disk that has done I/O since boot: its requests in
    /// flight, and for how long they have completed none. Partitions are
    /// left out (a disk's stall is its partitions' too), and devices that
    /// never did I/O (unbound loop devices). Unreadable /proc/diskstats:
    /// none.
    fn stalls(&self) -> Vec<Stall> {
        let text = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
        let disks: Vec<diskstats::DiskStat> = diskstats::parse(&text)
            .into_iter()
            .filter(|d| d.completed > 0 || d.in_flight > 0)
            .filter(|d| std::path::Path::new("/sys/block").join(&d.name).exists())
            .collect();
        let now = crate::time::monotonic_ns() as f64 / 1e9;
        let mut clock = self.stalls.lock().unwrap_or_else(|e| e.into_inner());
        clock.update(&disks, now)
    }
}

impl Source for Maps {
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        let mut rows = Vec::new();
        let stalls = self.stalls();
        let entries = match map_batch::per_cpu_hash_summed(&self.stats) {
            Ok(entries) => entries,
            Err(err) => return (Arc::new(Block { rows, stalls }), Some(err)),
        };
        for (key, total) in entries {
            let op = BLOCK_OP_NAMES
                .get(key.op as usize)
                .copied()
                .unwrap_or("other");
            rows.push((device_name(key.dev), op, total));
        }
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        (Arc::new(Block { rows, stalls }), None)
    }
}

/// Block I/O by (device name, operation), summed over CPUs.
#[derive(Debug, Clone, Default)]
pub struct Block {
    pub rows: Vec<(String, &'static str, BlockStats)>,
    /// Every whole disk that has done I/O: requests in flight, and how
    /// long they have completed none (0 while idle or completing).
    pub stalls: Vec<Stall>,
}

impl Block {
    /// The longest any disk has had requests in flight and completed
    /// none (0: none such).
    pub fn longest_stall(&self) -> f64 {
        self.stalls.iter().map(|s| s.seconds).fold(0.0, f64::max)
    }
}

impl Reading for Block {
    fn families(&self, out: &mut Vec<MetricFamily>) {
        let mut latency = Family::new(
            "sonde_block_io_duration_seconds",
            "Block I/O request latency, issue to completion, by device and operation",
            MetricType::HISTOGRAM,
        );
        let mut bytes = Family::new(
            "sonde_block_io_bytes_total",
            "Bytes of completed block I/O requests, by device and operation",
            MetricType::COUNTER,
        );
        let mut errors = Family::new(
            "sonde_block_io_errors_total",
            "Block I/O requests that completed with an error, by device and operation",
            MetricType::COUNTER,
        );
        let mut stalled = Family::new(
            "sonde_block_io_stalled_seconds",
            "How long the device has had requests in flight and completed none, from the kernel's \
             per-device counters (0: idle or completing)",
            MetricType::GAUGE,
        );
        for (device, op, stats) in &self.rows {
            let labels = [("device", device.as_str()), ("op", *op)];
            latency.histogram(
                &labels,
                &log2_buckets(&stats.slots),
                stats.requests,
                stats.sum_ns as f64 / 1e9,
            );
            bytes.sample(&labels, stats.bytes as f64);
            errors.sample(&labels, stats.errors as f64);
        }
        // Every disk that did I/O, 0 unless stalled, so that an alert on
        // it has a series from before the stall.
        let mut devices: std::collections::BTreeMap<&str, f64> = self
            .rows
            .iter()
            .map(|(device, _, _)| (device.as_str(), 0.0))
            .collect();
        for stall in &self.stalls {
            devices.insert(&stall.device, stall.seconds);
        }
        for (device, seconds) in devices {
            stalled.sample(&[("device", device)], seconds);
        }
        latency.done(out);
        bytes.done(out);
        errors.done(out);
        stalled.done(out);
    }

    fn completeness(&self) -> Option<(u64, u32)> {
        let requests = self.rows.iter().map(|b| b.2.requests).sum();
        Some((requests, BLOCK_START_MAP_FULL))
    }
}

/// A block device's name ("vda", "loop0") from the kernel's dev_t
/// (major << 20 | minor), as sysfs names it; "MAJ:MIN" when unknown.
fn device_name(dev: u32) -> String {
    let (major, minor) = (dev >> 20, dev & 0xf_ffff);
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|uevent| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_completeness_from_rows() {
        let mut stats = BlockStats {
            requests: 3,
            bytes: 12288,
            errors: 1,
            sum_ns: 3_000_000,
            ..Default::default()
        };
        stats.slots[10] = 3;
        let reading = Block {
            rows: vec![("vda".to_owned(), "write", stats)],
            stalls: vec![Stall {
                device: "loop4".to_owned(),
                in_flight: 2,
                seconds: 3.5,
            }],
        };
        let mut out = Vec::new();
        reading.families(&mut out);
        let names: Vec<&str> = out.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "sonde_block_io_duration_seconds",
                "sonde_block_io_bytes_total",
                "sonde_block_io_errors_total",
                "sonde_block_io_stalled_seconds"
            ]
        );
        // Every device that did I/O, and the stalled one that did not.
        let stalled = out[3].get_metric();
        assert_eq!(stalled.len(), 2);
        assert_eq!(stalled[0].get_label()[0].value(), "loop4");
        assert_eq!(stalled[0].get_gauge().value(), 3.5);
        assert_eq!(stalled[1].get_label()[0].value(), "vda");
        assert_eq!(stalled[1].get_gauge().value(), 0.0);
        assert_eq!(reading.longest_stall(), 3.5);
        assert_eq!(reading.completeness(), Some((3, BLOCK_START_MAP_FULL)));
        let mut none = Vec::new();
        Block::default().families(&mut none);
        assert!(none.is_empty(), "no device, no family");
    }

    #[test]
    fn unknown_devices_are_named_by_number() {
        assert_eq!(device_name((4095 << 20) | 12345), "4095:12345");
    }
}
