//! Top-K remote peers by traffic, with bounded cardinality and counters that
//! never go backwards.
//!
//! A peer is the address across the interface, paired with the address on
//! this side of it (`local`): on a NIC the node's own, on a pod's host-side
//! veth the pod's peer in the mesh, so pod-to-pod traffic can be named at
//! both ends. K (peer, local) pairs are exported under their own addresses;
//! every other pair's bytes go to `peer="other"` of the same interface and
//! direction. A peer keeps its
//! slot until a newcomer's recent traffic (EWMA per cycle) is more than 1.5 times
//! that of the quietest exported peer; the demoted peer's series disappears
//! (Prometheus treats it as stale) rather than being folded back, so no
//! exported counter ever decreases.

use std::{collections::HashMap, net::IpAddr};

/// Recent-traffic smoothing per collection cycle.
const EWMA_ALPHA: f64 = 0.3;
/// A newcomer must beat the quietest exported peer by this factor.
const PROMOTION_FACTOR: f64 = 1.5;
/// Candidates remembered beyond the exported set, as a multiple of K.
const CANDIDATES_PER_SLOT: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub ifindex: u32,
    /// `agent_common::net::DIRECTION_*`.
    pub direction: u8,
    /// Across the interface: the source of what it receives, the
    /// destination of what it sends.
    pub addr: IpAddr,
    /// This side of the interface: the other end of the same packets.
    pub local: IpAddr,
}

#[derive(Debug, Default, Clone, Copy)]
struct Exported {
    bytes: u64,
    packets: u64,
}

#[derive(Debug, Default)]
pub struct PeerTracker {
    k: usize,
    exported: HashMap<PeerKey, Exported>,
    /// Recent bytes per cycle, exported peers and candidates alike.
    recent: HashMap<PeerKey, f64>,
    other: HashMap<(u32, u8), Exported>,
}

/// One exported row: `peer` and `local` are `None` for "other".
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    pub ifindex: u32,
    pub direction: u8,
    pub peer: Option<IpAddr>,
    pub local: Option<IpAddr>,
    pub bytes: u64,
    pub packets: u64,
}

impl PeerTracker {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            ..Default::default()
        }
    }

    pub fn set_k(&mut self, k: usize) {
        self.k = k;
        while self.exported.len() > self.k {
            let Some(quietest) = self.quietest() else {
                break;
            };
            self.exported.remove(&quietest);
        }
    }

    /// Drops every row of a removed interface.
    pub fn forget_interface(&mut self, ifindex: u32) {
        self.exported.retain(|k, _| k.ifindex != ifindex);
        self.recent.retain(|k, _| k.ifindex != ifindex);
        self.other.retain(|(i, _), _| *i != ifindex);
    }

    /// Adds one cycle's traffic: (peer, bytes, packets) deltas.
    pub fn observe(&mut self, deltas: &HashMap<PeerKey, (u64, u64)>) {
        for value in self.recent.values_mut() {
            *value *= 1.0 - EWMA_ALPHA;
        }
        for (key, &(bytes, _)) in deltas {
            *self.recent.entry(*key).or_default() += EWMA_ALPHA * bytes as f64;
        }
        // Heaviest first, so free slots go to the biggest talkers.
        let mut ordered: Vec<(&PeerKey, &(u64, u64))> = deltas.iter().collect();
        ordered.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(b.0)));
        for (key, &(bytes, packets)) in ordered {
            if !self.exported.contains_key(key) {
                self.consider(*key);
            }
            let target = match self.exported.get_mut(key) {
                Some(exported) => exported,
                None => self.other.entry((key.ifindex, key.direction)).or_default(),
            };
            target.bytes += bytes;
            target.packets += packets;
        }
        self.prune();
    }

    fn consider(&mut self, key: PeerKey) {
        if self.k == 0 {
            return;
        }
        if self.exported.len() < self.k {
            self.exported.insert(key, Exported::default());
            return;
        }
        let Some(quietest) = self.quietest() else {
            return;
        };
        let rate = |k: &PeerKey| self.recent.get(k).copied().unwrap_or(0.0);
        if rate(&key) > PROMOTION_FACTOR * rate(&quietest) {
            self.exported.remove(&quietest);
            self.exported.insert(key, Exported::default());
        }
    }

    fn quietest(&self) -> Option<PeerKey> {
        self.exported
            .keys()
            .min_by(|a, b| {
                let ra = self.recent.get(a).copied().unwrap_or(0.0);
                let rb = self.recent.get(b).copied().unwrap_or(0.0);
                ra.total_cmp(&rb).then_with(|| a.cmp(b))
            })
            .copied()
    }

    /// Forgets the quietest candidates so memory stays bounded.
    fn prune(&mut self) {
        let limit = self.k.max(1) * CANDIDATES_PER_SLOT + self.exported.len();
        if self.recent.len() <= limit {
            return;
        }
        let mut candidates: Vec<(PeerKey, f64)> = self
            .recent
            .iter()
            .filter(|(k, _)| !self.exported.contains_key(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (key, _) in candidates
            .into_iter()
            .skip(self.k.max(1) * CANDIDATES_PER_SLOT)
        {
            self.recent.remove(&key);
        }
    }

    pub fn rows(&self) -> Vec<PeerRow> {
        let mut rows: Vec<PeerRow> = self
            .exported
            .iter()
            .map(|(key, e)| PeerRow {
                ifindex: key.ifindex,
                direction: key.direction,
                peer: Some(key.addr),
                local: Some(key.local),
                bytes: e.bytes,
                packets: e.packets,
            })
            .chain(self.other.iter().map(|(&(ifindex, direction), e)| PeerRow {
                ifindex,
                direction,
                peer: None,
                local: None,
                bytes: e.bytes,
                packets: e.packets,
            }))
            .collect();
        rows.sort_by(|a, b| {
            (a.ifindex, a.direction, a.peer, a.local).cmp(&(
                b.ifindex,
                b.direction,
                b.peer,
                b.local,
            ))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> PeerKey {
        PeerKey {
            ifindex: 1,
            direction: 0,
            addr: IpAddr::from([10, 0, 0, last]),
            local: IpAddr::from([10, 0, 1, 1]),
        }
    }

    fn cycle(tracker: &mut PeerTracker, traffic: &[(u8, u64)]) {
        let deltas = traffic.iter().map(|&(p, b)| (key(p), (b, 1))).collect();
        tracker.observe(&deltas);
    }

    fn bytes_of(tracker: &PeerTracker, peer: Option<u8>) -> Option<u64> {
        tracker
            .rows()
            .into_iter()
            .find(|r| r.peer == peer.map(|p| IpAddr::from([10, 0, 0, p])))
            .map(|r| r.bytes)
    }

    #[test]
    fn cardinality_is_bounded_and_the_heaviest_peers_win() {
        let mut tracker = PeerTracker::new(3);
        let mut total = 0;
        let mut previous: HashMap<Option<IpAddr>, u64> = HashMap::new();
        for round in 0..50u64 {
            let traffic: Vec<(u8, u64)> = (0..20).map(|p| (p, round + 10 * u64::from(p))).collect();
            total += traffic.iter().map(|t| t.1).sum::<u64>();
            cycle(&mut tracker, &traffic);
            for row in tracker.rows() {
                let before = previous.insert(row.peer, row.bytes);
                if let Some(before) = before {
                    assert!(row.bytes >= before, "{row:?} went back from {before}");
                }
            }
        }
        let rows = tracker.rows();
        assert_eq!(rows.iter().filter(|r| r.peer.is_some()).count(), 3);
        assert_eq!(rows.iter().filter(|r| r.peer.is_none()).count(), 1);
        for heavy in [17, 18, 19] {
            assert!(bytes_of(&tracker, Some(heavy)).is_some(), "{rows:?}");
        }
        // Demoted peers' series vanish with their bytes; never more than seen.
        assert!(rows.iter().map(|r| r.bytes).sum::<u64>() <= total);
    }

    #[test]
    fn heavy_newcomer_replaces_quietest_and_counters_stay_monotonic() {
        let mut tracker = PeerTracker::new(2);
        cycle(&mut tracker, &[(1, 100), (2, 10)]);
        let other_before = bytes_of(&tracker, None).unwrap_or(0);
        for _ in 0..5 {
            cycle(&mut tracker, &[(1, 100), (2, 10), (3, 1000)]);
            assert!(bytes_of(&tracker, None).unwrap_or(0) >= other_before);
        }
        assert!(
            bytes_of(&tracker, Some(3)).is_some(),
            "{:?}",
            tracker.rows()
        );
        assert!(bytes_of(&tracker, Some(1)).is_some());
        assert!(bytes_of(&tracker, Some(2)).is_none());
    }

    #[test]
    fn zero_k_folds_everything() {
        let mut tracker = PeerTracker::new(0);
        cycle(&mut tracker, &[(1, 5), (2, 7)]);
        assert_eq!(tracker.rows().len(), 1);
        assert_eq!(bytes_of(&tracker, None), Some(12));
    }
}
