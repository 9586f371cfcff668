//! The agent's memory footprint, measured from /proc: its resident set, and
//! the kernel memory of the BPF maps it holds (`memlock` in
//! /proc/PID/fdinfo/FD of each map, the amount charged to its memory cgroup
//! on kernels >= 5.11 and to RLIMIT_MEMLOCK before).

use std::collections::BTreeMap;

/// BPF map types whose memory is allocated once per possible CPU.
const PERCPU_MAP_TYPES: [u32; 4] = [
    5,  // BPF_MAP_TYPE_PERCPU_HASH
    6,  // BPF_MAP_TYPE_PERCPU_ARRAY
    10, // BPF_MAP_TYPE_LRU_PERCPU_HASH
    21, // BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE
];

#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    /// VmRSS of the process.
    pub rss_bytes: u64,
    /// Sum of `memlock` over the distinct maps it holds.
    pub map_bytes: u64,
    /// The part of `map_bytes` in per-CPU maps.
    pub percpu_map_bytes: u64,
    /// Distinct maps.
    pub maps: usize,
    /// Possible CPUs (what per-CPU maps are sized for).
    pub cpus: u64,
}

impl Footprint {
    /// Kernel map memory on a node with `cpus` possible CPUs, scaling the
    /// per-CPU part.
    pub fn map_bytes_at(&self, cpus: u64) -> u64 {
        let per_cpu = self.percpu_map_bytes / self.cpus.max(1);
        self.map_bytes - self.percpu_map_bytes + per_cpu * cpus
    }
}

/// Possible CPUs, from /sys/devices/system/cpu/possible ("0-63", "0,2-3").
pub fn possible_cpus() -> u64 {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let mut n = 0;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
                n += b.saturating_sub(a) + 1;
            }
            None => n += 1,
        }
    }
    n.max(1)
}

/// Measures process `pid` (needs root or the same user).
pub fn measure(pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    // map_id -> (type, memlock)
    let mut maps: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"));
    for fd in fds.filter_map(Result::ok) {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if !target.to_string_lossy().contains("bpf-map") {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        if let (Some(id), Some(ty), Some(memlock)) =
            (field("map_id:"), field("map_type:"), field("memlock:"))
        {
            maps.insert(id, (ty as u32, memlock));
        }
    }
    let map_bytes = maps.values().map(|(_, m)| m).sum();
    let percpu_map_bytes = maps
        .values()
        .filter(|(t, _)| PERCPU_MAP_TYPES.contains(t))
        .map(|(_, m)| m)
        .sum();
    Footprint {
        rss_bytes: rss_kb * 1024,
        map_bytes,
        percpu_map_bytes,
        maps: maps.len(),
        cpus: possible_cpus(),
    }
}

/// Bytes in MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
