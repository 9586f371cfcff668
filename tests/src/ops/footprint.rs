//! The agent's memory footprint, measured from /proc: its resident set, and
//! the kernel memory of the BPF maps it holds (`memlock` in
//! /proc/PID/fdinfo/FD of each map, the amount charged to its memory cgroup
//! on kernels >= 5.11 and to RLIMIT_MEMLOCK before).

/// BPF map types whose memory is allocated once per possible CPU.
const PERCPU_MAP_TYPES: [u64; 4] = [
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

/// One kernel map a process holds, as its /proc/PID/fdinfo/FD describes it.
#[derive(Debug, Clone)]
pub struct HeldMap {
    pub id: u64,
    pub map_type: u64,
    pub value_size: u64,
    pub max_entries: u64,
    pub flags: u64,
    /// The kernel's own accounting of the map's memory.
    pub memlock: u64,
}

impl HeldMap {
    /// hash, percpu_hash, lru_hash, lru_percpu_hash: maps with entries
    /// worth counting.
    pub fn is_hash(&self) -> bool {
        matches!(self.map_type, 1 | 5 | 9 | 10)
    }

    /// One of [`PERCPU_MAP_TYPES`].
    pub fn is_per_cpu(&self) -> bool {
        PERCPU_MAP_TYPES.contains(&self.map_type)
    }

    /// Allocated as keys appear (BPF_F_NO_PREALLOC): its memlock is what
    /// the keys in use take, each with one value per CPU.
    pub fn allocated_on_use(&self) -> bool {
        self.flags & 1 != 0
    }

    /// Bytes of this map reserved once per possible CPU: the value area of
    /// a preallocated per-CPU map (value size rounded up to 8, per entry).
    pub fn per_cpu_bytes(&self, possible_cpus: u64) -> u64 {
        if self.is_per_cpu() && !self.allocated_on_use() {
            self.value_size.div_ceil(8) * 8 * self.max_entries * possible_cpus
        } else {
            0
        }
    }
}

/// The kernel maps process `pid` holds (each once, however many fds), from
/// its fds' fdinfo; empty when the process is gone.
pub fn held_maps(pid: u32) -> Vec<HeldMap> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut maps: Vec<HeldMap> = Vec::new();
    for e in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let value = |k: &str| info.lines().find_map(|l| Some(l.strip_prefix(k)?.trim()));
        let field = |k: &str| value(k)?.parse::<u64>().ok();
        let (Some(id), Some(map_type)) = (field("map_id:"), field("map_type:")) else {
            continue;
        };
        if maps.iter().any(|m| m.id == id) {
            continue;
        }
        maps.push(HeldMap {
            id,
            map_type,
            value_size: field("value_size:").unwrap_or(0),
            max_entries: field("max_entries:").unwrap_or(0),
            flags: value("map_flags:")
                .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0),
            memlock: field("memlock:").unwrap_or(0),
        });
    }
    maps
}

/// How many BPF links process `pid` holds open (attachments it owns).
pub fn held_links(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.lines().any(|l| l.starts_with("link_id:")))
        .count()
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
    let maps = held_maps(pid);
    let map_bytes = maps.iter().map(|m| m.memlock).sum();
    let percpu_map_bytes = maps
        .iter()
        .filter(|m| m.is_per_cpu())
        .map(|m| m.memlock)
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
