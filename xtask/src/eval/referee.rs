//! The incidents' referee: what the kernel says an incident did, read
//! apart from Sonde. A fault can touch nothing (a shaper whose rate the
//! traffic never reaches); such an incident is scored as normal load, since
//! a detector that named it would be naming nothing and one that stayed
//! silent was right. The report shows every reading.
//!
//! One referee so far, for latency incidents: the kernel's smoothed RTT of
//! the host's TCP connections to the peer, from `ss`.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use serde::Serialize;

/// How long the referee reads before an incident, for its normal range.
pub const BEFORE: Duration = Duration::from_secs(3);
const EVERY: Duration = Duration::from_millis(250);

/// What an incident of a kind is refereed by, if anything.
pub fn of(kind: &str) -> Option<&'static str> {
    (kind == "latency_regression")
        .then_some("the kernel's smoothed RTT of the host's TCP connections to the peer (ss), ms")
}

/// What the referee read around one incident.
#[derive(Debug, Clone, Serialize)]
pub struct Reading {
    pub what: &'static str,
    /// The highest value in the seconds before the incident.
    pub before_max: f64,
    /// The median over the incident's second half (the first gives the
    /// smoothed value time to follow).
    pub during_median: f64,
    /// Samples before, during.
    pub samples: (usize, usize),
    /// The incident moved the value: its median is above every value of
    /// the normal range before it.
    pub effect: bool,
}

/// The reading from the samples before and during an incident; None when
/// either is empty (no connection to read: the incident is scored).
pub fn judge(what: &'static str, before: &[f64], during: &[f64]) -> Option<Reading> {
    let before_max = before.iter().copied().reduce(f64::max)?;
    let mut late = during[during.len() / 2..].to_vec();
    late.sort_by(f64::total_cmp);
    let during_median = *late.get(late.len() / 2)?;
    Some(Reading {
        what,
        before_max,
        during_median,
        samples: (before.len(), during.len()),
        effect: during_median > before_max,
    })
}

/// Reads the host's RTT to `peer` every 250 ms on a thread until finished.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<f64>>,
}

impl Sampler {
    pub fn start(peer: &'static str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some(rtt) = peer_rtt_ms(peer) {
                    samples.push(rtt);
                }
                thread::sleep(EVERY);
            }
            samples
        });
        Sampler { stop, thread }
    }

    pub fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The highest smoothed RTT of the host's TCP connections to `peer`.
fn peer_rtt_ms(peer: &str) -> Option<f64> {
    let out = Command::new("ss")
        .args(["-H", "-t", "-i", "-n", "dst", peer])
        .output()
        .ok()?;
    max_rtt_ms(&String::from_utf8_lossy(&out.stdout))
}

/// The largest `rtt:<srtt>/<rttvar>` in `ss -ti` text: ss prints socket
/// details as text only, so the one field is picked out by its prefix.
fn max_rtt_ms(ss: &str) -> Option<f64> {
    ss.split_whitespace()
        .filter_map(|token| token.strip_prefix("rtt:"))
        .filter_map(|v| v.split('/').next()?.parse::<f64>().ok())
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_smoothed_rtt_is_read_and_the_others_are_not() {
        let ss = "ESTAB 0 0 10.0.0.1:40000 10.0.0.2:8080\n\t cubic wscale:7,7 rto:201 \
                  rtt:1.25/0.5 ato:40 mss:1448 rcv_rtt:9.5 minrtt:0.04\n\
                  ESTAB 0 0 10.0.0.1:40002 10.0.0.2:5201\n\t cubic rtt:3.5/1.75 minrtt:0.1\n";
        assert_eq!(max_rtt_ms(ss), Some(3.5));
        assert_eq!(max_rtt_ms(""), None);
        assert_eq!(max_rtt_ms("rcv_rtt:4 minrtt:2"), None);
    }

    #[test]
    fn an_incident_moves_the_value_only_past_its_normal_range() {
        let what = "rtt";
        // The second half's median (20) is above everything before.
        let moved = judge(what, &[1.0, 1.4, 1.2], &[1.1, 5.0, 18.0, 20.0, 22.0]).unwrap();
        assert!(moved.effect);
        assert_eq!((moved.before_max, moved.during_median), (1.4, 20.0));
        // Inside the normal range, with one high sample: no effect.
        let flat = judge(what, &[1.0, 1.4, 1.2], &[1.1, 1.3, 1.0, 2.0, 1.2]).unwrap();
        assert!(!flat.effect);
        assert!(judge(what, &[], &[1.0]).is_none());
        assert!(judge(what, &[1.0], &[]).is_none());
    }
}
