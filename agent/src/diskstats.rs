//! Stalled block devices from the kernel's own per-device counters
//! (/proc/diskstats): a device with requests in flight that completed
//! none of them since an earlier reading has been stalled at least that
//! long. A hung disk completes nothing, so the request-latency histogram
//! (block_rq_complete) never sees it; these counters do, for every device
//! the kernel accounts (bio-based ones too). Hand-parsed: one line of
//! numbers per device; procfs reads it as part of all of /proc.

use std::collections::HashMap;

/// One device's line: its name, requests in flight now, requests
/// completed so far (reads, writes, discards and flushes), and the
/// milliseconds it has had any in flight (io_ticks, %util's source; this
/// 6.18 brings it up to date when the file is read while requests are in
/// flight, older kernels only at each start and end of a request, which
/// leaves the stall's lower bound as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStat {
    pub name: String,
    pub in_flight: u64,
    pub completed: u64,
    pub busy_ms: u64,
}

/// Every device of a /proc/diskstats text. Columns (Documentation/
/// admin-guide/iostats.rst): major, minor, name, then reads completed
/// (1), writes completed (5), I/Os in progress (9), ms doing I/O (10),
/// discards completed (12, since 4.18) and flushes completed (16, since
/// 5.5), counted from the first after the name. Lines too short to hold
/// a name and the first 11 fields are skipped.
pub fn parse(text: &str) -> Vec<DiskStat> {
    text.lines()
        .filter_map(|line| {
            let mut columns = line.split_whitespace().skip(2);
            let name = columns.next()?.to_owned();
            let fields: Vec<u64> = columns.map(|c| c.parse().unwrap_or(0)).collect();
            let field = |i: usize| fields.get(i - 1).copied().unwrap_or(0);
            (fields.len() >= 11).then(|| DiskStat {
                name,
                in_flight: field(9),
                completed: field(1) + field(5) + field(12) + field(16),
                busy_ms: field(10),
            })
        })
        .collect()
}

/// A device's requests in flight, and how long they have completed none
/// (0: it is idle or completing).
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    pub device: String,
    pub in_flight: u64,
    pub seconds: f64,
}

/// Per device, when it last made progress: was idle (nothing in flight)
/// or completed a request. Fed every reading; a device gone from the
/// readings is forgotten.
#[derive(Debug, Default)]
pub struct StallClock {
    progress: HashMap<String, Progress>,
}

/// A device at the last reading.
#[derive(Debug, Clone, Copy)]
struct Progress {
    at: f64,
    completed: u64,
    busy_ms: u64,
    /// Since when the requests then in flight had been (None: nothing
    /// was in flight).
    since: Option<f64>,
}

impl StallClock {
    /// Takes a reading at `now` (seconds, monotonic) and returns, for
    /// each device, its requests in flight and how long they have
    /// completed none: 0 while idle, and on a reading where it completed
    /// some or is first seen. A stall is known from one reading to the
    /// next, a lower bound by up to the time between readings, except
    /// where it began after an idle reading: then the kernel's own busy
    /// time since says when.
    pub fn update(&mut self, disks: &[DiskStat], now: f64) -> Vec<Stall> {
        let mut progress = HashMap::with_capacity(disks.len());
        let mut stalls = Vec::with_capacity(disks.len());
        for disk in disks {
            let last = self.progress.get(&disk.name);
            let since = (disk.in_flight > 0).then(|| match last {
                Some(last) if last.completed == disk.completed => match last.since {
                    // Busy at the last reading and nothing completed
                    // since: what was in flight then still is.
                    Some(since) => since,
                    // Idle then, nothing completed since: all in flight
                    // was issued after it, and has been in flight as
                    // long as the device has been busy since.
                    None => {
                        let busy = disk.busy_ms.saturating_sub(last.busy_ms) as f64 / 1e3;
                        now - busy.min(now - last.at)
                    }
                },
                _ => now,
            });
            stalls.push(Stall {
                device: disk.name.clone(),
                in_flight: disk.in_flight,
                seconds: since.map_or(0.0, |since| now - since),
            });
            progress.insert(
                disk.name.clone(),
                Progress {
                    at: now,
                    completed: disk.completed,
                    busy_ms: disk.busy_ms,
                    since,
                },
            );
        }
        self.progress = progress;
        stalls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of a 6.x kernel (20 fields) and of a 4.x one (11 fields).
    const TEXT: &str = "\
   7       0 loop0 10 0 80 4 77074 0 690368 190701 2 111576 190701 7 0 0 0 5 9 0 0
 253       0 vda 9000 12 300000 4000 8000 900 120000 9000 0 7000 13000 3 0 24 1 400 60
 253       1 vda1 8000 12 290000 3900 7000 900 110000 8000 1 6000 12000
   8       0 short 1 2 3
";

    #[test]
    fn lines_of_every_kernel_give_in_flight_and_completions() {
        let disks = parse(TEXT);
        assert_eq!(
            disks,
            [
                DiskStat {
                    name: "loop0".into(),
                    in_flight: 2,
                    completed: 10 + 77074 + 7 + 5,
                    busy_ms: 111576,
                },
                DiskStat {
                    name: "vda".into(),
                    in_flight: 0,
                    completed: 9000 + 8000 + 3 + 400,
                    busy_ms: 7000,
                },
                DiskStat {
                    name: "vda1".into(),
                    in_flight: 1,
                    completed: 8000 + 7000,
                    busy_ms: 6000,
                },
            ]
        );
    }

    /// A device's reading; the kernel's busy time as on a kernel that
    /// does not bring it up to date when read (0 throughout).
    fn disk(in_flight: u64, completed: u64) -> Vec<DiskStat> {
        busy_disk(in_flight, completed, 0)
    }

    fn busy_disk(in_flight: u64, completed: u64, busy_ms: u64) -> Vec<DiskStat> {
        vec![DiskStat {
            name: "loop5".into(),
            in_flight,
            completed,
            busy_ms,
        }]
    }

    #[test]
    fn a_stall_lasts_from_the_last_reading_with_progress() {
        let mut clock = StallClock::default();
        let idle = clock.update(&disk(0, 10), 0.0);
        assert_eq!((idle[0].in_flight, idle[0].seconds), (0, 0.0));
        // Issued after the idle reading: in flight, nothing known yet.
        let first = clock.update(&disk(1, 10), 1.0);
        assert_eq!(first[0].seconds, 0.0);
        assert_eq!(clock.update(&disk(1, 10), 2.0)[0].seconds, 1.0);
        let stalled = clock.update(&disk(3, 10), 4.5);
        assert_eq!(stalled[0].seconds, 3.5);
        assert_eq!(stalled[0].in_flight, 3);
        // One completion is progress, even with more in flight.
        assert_eq!(clock.update(&disk(4, 11), 5.0)[0].seconds, 0.0);
        assert_eq!(clock.update(&disk(4, 11), 6.0)[0].seconds, 1.0);
        assert_eq!(clock.update(&disk(0, 15), 7.0)[0].seconds, 0.0, "drained");
    }

    #[test]
    fn a_stall_after_an_idle_reading_counts_from_when_the_kernel_saw_it_begin() {
        let mut clock = StallClock::default();
        clock.update(&busy_disk(0, 10, 5_000), 0.0);
        // Issued 0.7 s into the second: busy 300 ms by the next reading.
        let first = clock.update(&busy_disk(1, 10, 5_300), 1.0);
        assert!((first[0].seconds - 0.3).abs() < 1e-9, "{first:?}");
        let second = clock.update(&busy_disk(1, 10, 6_300), 2.0);
        assert!((second[0].seconds - 1.3).abs() < 1e-9, "{second:?}");
        // Never more than the time since the idle reading (jiffies round).
        let mut clock = StallClock::default();
        clock.update(&busy_disk(0, 10, 5_000), 0.0);
        assert_eq!(clock.update(&busy_disk(1, 10, 6_004), 1.0)[0].seconds, 1.0);
        // Something completed since the idle reading: when the rest began
        // is unknown, the stall counts from this reading.
        let mut clock = StallClock::default();
        clock.update(&busy_disk(0, 10, 5_000), 0.0);
        assert_eq!(clock.update(&busy_disk(1, 12, 5_900), 1.0)[0].seconds, 0.0);
    }

    #[test]
    fn a_busy_device_that_completes_is_not_stalled() {
        let mut clock = StallClock::default();
        for i in 0..10 {
            let stalls = clock.update(&disk(8, 100 * i), f64::from(i as u32));
            assert_eq!(stalls[0].seconds, 0.0);
        }
    }

    #[test]
    fn a_device_that_comes_back_starts_afresh() {
        let mut clock = StallClock::default();
        clock.update(&disk(1, 10), 0.0);
        clock.update(&[], 1.0);
        assert_eq!(clock.update(&disk(1, 10), 2.0)[0].seconds, 0.0);
    }
}
