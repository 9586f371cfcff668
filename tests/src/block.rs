//! Block devices a test makes and removes: a loop device over a file, and
//! a slow one, whose requests wait on a write limit for its writer's
//! cgroup on the disk under its file. The kernel's own per-device
//! counters (/sys/block/NAME/stat) are the referee for what they did.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    cgroup::TestCgroup,
    sys::{cmd, output},
};

/// A loop device over a file, detached and the file removed on drop.
pub struct LoopDevice {
    device: String,
    file: PathBuf,
}

impl LoopDevice {
    /// A loop device over a new sparse file of `size` bytes at `file`: the
    /// first free one, or `at` ("/dev/loop57", made if missing) when
    /// given; with `direct_io`, requests go straight to the file's own
    /// disk, with no page cache between.
    pub fn try_new(
        file: &Path,
        size: u64,
        at: Option<&str>,
        direct_io: bool,
    ) -> io::Result<LoopDevice> {
        let f = std::fs::File::create(file)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", file.display())))?;
        f.set_len(size)?;
        let file_arg = file.display().to_string();
        let mut args = vec!["--direct-io=".to_owned() + if direct_io { "on" } else { "off" }];
        match at {
            Some(device) => args.extend([device.to_owned(), file_arg]),
            None => args.extend(["--find".to_owned(), "--show".to_owned(), file_arg]),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let device = match output(&mut cmd("losetup", &args)) {
            Ok(out) => at.map_or_else(|| out.trim().to_owned(), str::to_owned),
            Err(e) => {
                let _ = std::fs::remove_file(file);
                return Err(e);
            }
        };
        let loop_device = LoopDevice {
            device,
            file: file.to_owned(),
        };
        if direct_io {
            let dio =
                std::fs::read_to_string(format!("/sys/block/{}/loop/dio", loop_device.name()))
                    .unwrap_or_default();
            if dio.trim() != "1" {
                return Err(io::Error::other(format!(
                    "{} over {}: the kernel refused direct I/O to the file (its file system \
                     must support O_DIRECT)",
                    loop_device.device,
                    file.display()
                )));
            }
        }
        Ok(loop_device)
    }

    /// [`LoopDevice::try_new`] over an 8 MiB file in the temporary
    /// directory, panicking on failure.
    pub fn new(tag: &str) -> LoopDevice {
        let file = std::env::temp_dir().join(format!("sonde-{tag}-{}.img", std::process::id()));
        LoopDevice::try_new(&file, 8 << 20, None, false).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Its path, "/dev/loop3".
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Its name as sysfs and the agent's metrics give it, "loop3".
    pub fn name(&self) -> &str {
        self.device.trim_start_matches("/dev/")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = output(&mut cmd("losetup", &["-d", &self.device])) {
            eprintln!("warning: losetup -d {}: {e}", self.device);
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A loop device whose writes, made by [`SlowDevice::writers`], each wait
/// on a write limit (bytes per second) the test's cgroup has on the disk
/// under its backing file: the loop driver writes the file on the
/// writer's behalf, charged to the writer's cgroup, so each request on the
/// loop device takes its size over the limit. A slow disk the kernel times
/// like any other, made from a loop device and the block throttle (this
/// kernel has no null_blk or dm-delay).
pub struct SlowDevice {
    // Declared first: detached before its writers' cgroups are removed.
    device: LoopDevice,
    cgroup: TestCgroup,
    /// Where the limit is cgroup v1's: a cgroup2 cgroup the writers join
    /// too, for their I/O pressure.
    pressure: Option<TestCgroup>,
    /// The cgroup's limit file, and what lifts the limit.
    limit: (PathBuf, String),
}

impl SlowDevice {
    /// A slow device of 64 MiB over a file in `dir` (which must be on a
    /// block device: a disk or a partition of one), at `at` when given,
    /// its writes limited to `bytes_per_second`.
    pub fn try_new(dir: &Path, at: Option<&str>, bytes_per_second: u64) -> io::Result<SlowDevice> {
        let disk = disk_under(dir)?;
        let tag = format!("sonde-slow-{}", std::process::id());
        let (cgroup, limit) = throttled_cgroup(&tag, &disk, bytes_per_second)?;
        let pressure = match crate::cgroup::v2_mount() {
            Some(root) if !cgroup.dir().starts_with(&root) => {
                Some(TestCgroup::at(root.join(&tag))?)
            }
            _ => None,
        };
        let file = dir.join(format!("{tag}.img"));
        let device = LoopDevice::try_new(&file, 64 << 20, at, true)?;
        Ok(SlowDevice {
            device,
            cgroup,
            pressure,
            limit,
        })
    }

    /// How long its writers have waited on I/O, by the kernel's pressure
    /// accounting of their cgroup (µs; None without cgroup2).
    pub fn io_pressure_some_us(&self) -> Option<f64> {
        let dir = self.pressure.as_ref().unwrap_or(&self.cgroup).dir();
        crate::cgroup::io_pressure_some_us(dir)
    }

    /// Lifts the write limit: requests held by it go on at once. At a
    /// limit of a few bytes a second a request of a MiB never completes
    /// in a test's time (a hung disk); this ends the hang.
    pub fn unthrottle(&self) -> io::Result<()> {
        let (path, lifted) = &self.limit;
        write_limit(path, lifted)
    }

    /// Its requests in flight, reads and writes, by the kernel's count
    /// (/sys/block/NAME/inflight).
    pub fn in_flight(&self) -> io::Result<(u64, u64)> {
        let name = self.device.name();
        let text = std::fs::read_to_string(format!("/sys/block/{name}/inflight"))?;
        let mut counts = text.split_whitespace().map(|v| v.parse().unwrap_or(0));
        Ok((counts.next().unwrap_or(0), counts.next().unwrap_or(0)))
    }

    pub fn loop_device(&self) -> &LoopDevice {
        &self.device
    }

    /// `writers` `dd`s, each writing `count` blocks of `block_size` bytes
    /// with O_DIRECT to a region of the device its own, from inside the
    /// throttled cgroup: each has one request in flight at a time, and a
    /// request waits for the limit to pass the others' ahead of it, about
    /// `writers` × `block_size` / the limit. Stopped (SIGTERM) it stops
    /// its writers.
    pub fn writers(&self, block_size: u64, count: u64, writers: u64) -> Command {
        // Regions apart: the kernel tracks a request in flight by its
        // device and first sector.
        let also = self
            .pressure
            .as_ref()
            .map(|c| {
                format!(
                    "echo $$ > {} || exit 1; ",
                    c.dir().join("cgroup.procs").display()
                )
            })
            .unwrap_or_default();
        let script = format!(
            "echo $$ > {procs} || exit 1; {also}pids=''; \
             trap 'kill $pids 2>/dev/null; exit 143' TERM INT; i=0; \
             while [ $i -lt {writers} ]; do \
             dd if=/dev/zero of={device} bs={block_size} count={count} seek=$((i * {count})) \
             oflag=direct status=none & pids=\"$pids $!\"; i=$((i + 1)); done; \
             status=0; for p in $pids; do wait $p || status=1; done; exit $status",
            procs = self.cgroup.dir().join("cgroup.procs").display(),
            device = self.device.device()
        );
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    }
}

impl Drop for SlowDevice {
    /// Lifts the limit first, and waits (5 s at most) for what it held:
    /// a writer stuck on it can neither exit its cgroup nor let the loop
    /// device go, even killed.
    fn drop(&mut self) {
        if let Err(e) = self.unthrottle() {
            eprintln!("warning: {e}");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.in_flight().is_ok_and(|(r, w)| r + w > 0) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The whole disk ("MAJ:MIN") holding `dir`'s file system: the block
/// throttle takes whole disks, not partitions.
fn disk_under(dir: &Path) -> io::Result<String> {
    let dev = std::fs::metadata(dir)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return Err(io::Error::other(format!(
            "{} is not on a block device ({major}:{minor}: tmpfs, overlay or another \
             virtual file system); a slow device needs a file on a disk",
            dir.display()
        )));
    }
    let whole = if sys.join("partition").exists() {
        sys.join("..")
    } else {
        sys
    };
    Ok(std::fs::read_to_string(whole.join("dev"))?
        .trim()
        .to_owned())
}

/// A new cgroup whose writes to `disk` are limited to `bytes_per_second`
/// (removed on drop): the v1 blkio controller's where it is mounted, else
/// cgroup2's io controller (enabled for the root's children if needed).
/// With it, its limit file and what written there lifts the limit.
fn throttled_cgroup(
    tag: &str,
    disk: &str,
    bytes_per_second: u64,
) -> io::Result<(TestCgroup, (PathBuf, String))> {
    let v1 = Path::new("/sys/fs/cgroup/blkio");
    let (dir, file, limit, lifted) = if v1.join("blkio.throttle.write_bps_device").exists() {
        (
            v1.join(tag),
            "blkio.throttle.write_bps_device",
            format!("{disk} {bytes_per_second}"),
            format!("{disk} 0"),
        )
    } else {
        let root = crate::cgroup::v2_mount()
            .ok_or_else(|| io::Error::other("neither cgroup v1 blkio nor cgroup2 is mounted"))?;
        std::fs::write(root.join("cgroup.subtree_control"), "+io").map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("enabling the io controller in {}: {e}", root.display()),
            )
        })?;
        (
            root.join(tag),
            "io.max",
            format!("{disk} wbps={bytes_per_second}"),
            format!("{disk} wbps=max"),
        )
    };
    let cgroup = TestCgroup::at(dir)?;
    let path = cgroup.dir().join(file);
    write_limit(&path, &limit)?;
    Ok((cgroup, (path, lifted)))
}

/// Writes `value` to a cgroup's limit file, the error naming both.
fn write_limit(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

/// A block device's completed reads and writes and the milliseconds they
/// took, by the kernel's own accounting (/sys/block/NAME/stat).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskStat {
    pub reads: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub write_ms: u64,
}

impl DiskStat {
    pub fn read(name: &str) -> io::Result<DiskStat> {
        let text = std::fs::read_to_string(format!("/sys/block/{name}/stat"))?;
        let f: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() < 8 {
            return Err(io::Error::other(format!(
                "/sys/block/{name}/stat: {text:?}"
            )));
        }
        Ok(DiskStat {
            reads: f[0],
            read_ms: f[3],
            writes: f[4],
            write_ms: f[7],
        })
    }

    /// The mean write latency between `before` and `self`, in seconds
    /// (the kernel gives the total in whole milliseconds).
    pub fn mean_write_seconds_since(&self, before: &DiskStat) -> Option<f64> {
        let writes = self.writes.checked_sub(before.writes).filter(|&w| w > 0)?;
        let ms = self.write_ms.saturating_sub(before.write_ms);
        Some(ms as f64 / 1e3 / writes as f64)
    }
}
