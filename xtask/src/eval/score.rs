//! Scoring: which anomaly records match which injected incident, and the
//! figures the issue asks for (precision, recall, time to detect, false
//! positives under normal load, kind accuracy, F1), for Sonde's detector
//! and for the comparators replayed on its feature vectors
//! ([`super::comparators`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// An anomaly as a detector reported it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub kind: String,
    pub start: f64,
    pub subject: Option<String>,
    /// The top culprit's typed names (address, or pid, comm and cgroup),
    /// space-separated.
    #[serde(default)]
    pub culprit: Option<String>,
}

/// A stretch of the run: normal load, or an incident expected to be named
/// `expected`.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub expected: Option<String>,
    /// What the matching anomaly's subject must contain, if anything.
    pub subject: Option<String>,
    /// An incident of the held-out set.
    #[serde(default)]
    pub held_out: bool,
    pub start: f64,
    pub end: f64,
}

/// Which incidents a score covers; records in the others' windows count
/// neither way. Normal load is in every scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Tuned,
    HeldOut,
}

impl Scope {
    fn covers(self, p: &Phase) -> bool {
        match self {
            Scope::All => true,
            Scope::Tuned => !p.held_out,
            Scope::HeldOut => p.held_out,
        }
    }
}

/// One cycle's feature vector, as the agent's Monitor produced it.
#[derive(Debug, Clone)]
pub struct Cycle {
    pub time: f64,
    pub features: BTreeMap<String, f64>,
}

/// How features become named anomalies (from /api/v1/features).
#[derive(Debug, Clone, Default)]
pub struct Naming {
    pub kinds: BTreeMap<String, String>,
    pub explains: Vec<(String, Vec<String>)>,
    pub quiet_cycles: u32,
}

impl Naming {
    /// Kinds firing in a cycle, after the causes absorb their symptoms
    /// (in this cycle, or because the cause is already in progress).
    pub fn name(&self, firing: BTreeSet<String>, active: &BTreeSet<String>) -> BTreeSet<String> {
        let mut firing = firing;
        for (cause, symptoms) in &self.explains {
            if firing.contains(cause) {
                for s in symptoms {
                    firing.remove(s);
                }
            }
        }
        firing
            .into_iter()
            .map(|kind| {
                self.explains
                    .iter()
                    .find(|(cause, symptoms)| active.contains(cause) && symptoms.contains(&kind))
                    .map_or(kind, |(cause, _)| cause.clone())
            })
            .collect()
    }
}

/// What became of one incident.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentOutcome {
    pub incident: String,
    pub expected: String,
    pub detected: bool,
    /// The first record in the incident's window has the expected kind.
    pub kind_correct: bool,
    /// Cycles from the injection to the first record of the expected kind.
    pub cycles_to_detect: Option<u32>,
    /// Every kind named in the window, in order.
    pub named: Vec<String>,
    /// The subject of the first record of the expected kind, and whether
    /// it names the culprit (None: nothing to name).
    pub subject: Option<String>,
    pub subject_correct: Option<bool>,
    /// The top culprit of that record, and whether it is the one the
    /// incident was made by (None: the incident names none).
    pub culprit: Option<String>,
    pub culprit_correct: Option<bool>,
    /// Detected, but the record names no subject at all.
    pub detected_without_subject: bool,
}

/// The figures for one detector.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub detector: String,
    pub records: usize,
    pub true_positives: usize,
    pub precision: f64,
    pub recall: f64,
    /// The harmonic mean of precision and recall.
    pub f1: f64,
    pub kind_accuracy: f64,
    /// Incidents whose culprit was named right, of those with one.
    pub subjects_named: (usize, usize),
    /// Incidents whose top typed culprit is the right peer, process or
    /// cgroup, of those with one (a missed incident counts as wrong).
    pub culprits_right: (usize, usize),
    pub culprit_accuracy: f64,
    /// Incidents detected but reported without a subject.
    pub detected_without_subject: Vec<String>,
    pub max_cycles_to_detect: Option<u32>,
    pub mean_cycles_to_detect: Option<f64>,
    /// Records opened under normal load only, and that load's length.
    pub normal_false_positives: usize,
    pub normal_seconds: f64,
    /// Of those, in the long false-positive run.
    pub fp_run_false_positives: usize,
    pub false_positive_kinds: BTreeMap<String, usize>,
    pub incidents: Vec<IncidentOutcome>,
}

/// Whether a culprit's `name` is the `want`ed one: an address exactly
/// (10.0.0.1 is not 10.0.0.10), a comm or cgroup path by containment
/// (stress-ng's workers are "stress-ng-fork", cgroups are paths).
fn names(name: &str, want: &str) -> bool {
    if want.parse::<std::net::IpAddr>().is_ok() {
        name == want
    } else {
        name.contains(want)
    }
}

/// Matches `records` to `phases`: a record belongs to the incident whose
/// window (its span plus `grace` seconds, for the cycle that sees the end)
/// holds its start, the one expecting its kind where two faults share a
/// window; any other record is a false positive.
pub fn score(
    detector: &str,
    records: &[Record],
    phases: &[Phase],
    interval: f64,
    grace: f64,
    fp_run: &str,
    scope: Scope,
) -> Score {
    let holds = |p: &Phase, t: f64| p.expected.is_some() && t >= p.start && t <= p.end + grace;
    let window_of = |r: &Record| {
        let mut holding = phases.iter().filter(|p| holds(p, r.start));
        let first = holding.clone().next();
        holding
            .find(|p| p.expected.as_deref() == Some(r.kind.as_str()))
            .or(first)
    };
    // Kinds another fault made in the same window expects: its records are
    // not this fault's to score.
    let siblings_expect = |p: &Phase, kind: &str| {
        phases.iter().any(|q| {
            q.name != p.name
                && q.start == p.start
                && q.end == p.end
                && q.expected != p.expected
                && q.expected.as_deref() == Some(kind)
        })
    };
    let mut tp = 0;
    let mut normal_fp = 0;
    let mut fp_run_fp = 0;
    let mut fp_kinds: BTreeMap<String, usize> = BTreeMap::new();
    // Only the scope's records are scored.
    let records: Vec<&Record> = records
        .iter()
        .filter(|r| window_of(r).is_none_or(|p| scope.covers(p)))
        .collect();
    for r in records.iter().copied() {
        match window_of(r) {
            Some(p) if p.expected.as_deref() == Some(r.kind.as_str()) => tp += 1,
            Some(_) => *fp_kinds.entry(r.kind.clone()).or_default() += 1,
            None => {
                *fp_kinds.entry(r.kind.clone()).or_default() += 1;
                normal_fp += 1;
                if phases
                    .iter()
                    .any(|p| p.name == fp_run && r.start >= p.start && r.start <= p.end)
                {
                    fp_run_fp += 1;
                }
            }
        }
    }
    let mut incidents = Vec::new();
    for p in phases
        .iter()
        .filter(|p| p.expected.is_some() && scope.covers(p))
    {
        let expected = p.expected.clone().unwrap_or_default();
        let mut mine: Vec<&Record> = records
            .iter()
            .copied()
            .filter(|r| r.start >= p.start && r.start <= p.end + grace)
            .filter(|r| !siblings_expect(p, &r.kind))
            .collect();
        mine.sort_by(|a, b| a.start.total_cmp(&b.start));
        let hit = mine.iter().find(|r| r.kind == expected);
        incidents.push(IncidentOutcome {
            incident: p.name.clone(),
            expected: expected.clone(),
            detected: hit.is_some(),
            kind_correct: mine.first().is_some_and(|r| r.kind == expected),
            cycles_to_detect: hit.map(|r| ((r.start - p.start) / interval).ceil().max(1.0) as u32),
            named: mine.iter().map(|r| r.kind.clone()).collect(),
            subject: hit.and_then(|r| r.subject.clone()),
            subject_correct: p.subject.as_ref().map(|want| {
                hit.and_then(|r| r.subject.as_ref())
                    .is_some_and(|got| got.contains(want.as_str()))
            }),
            culprit: hit.and_then(|r| r.culprit.clone()),
            culprit_correct: p.subject.as_ref().map(|want| {
                hit.and_then(|r| r.culprit.as_ref())
                    .is_some_and(|got| got.split(' ').any(|name| names(name, want)))
            }),
            detected_without_subject: hit.is_some_and(|r| r.subject.is_none()),
        });
    }
    let n = incidents.len().max(1) as f64;
    let detected = incidents.iter().filter(|i| i.detected).count();
    let with_records = incidents.iter().filter(|i| !i.named.is_empty()).count();
    let ttd: Vec<u32> = incidents
        .iter()
        .filter_map(|i| i.cycles_to_detect)
        .collect();
    let culprits_right = (
        incidents
            .iter()
            .filter(|i| i.culprit_correct == Some(true))
            .count(),
        incidents
            .iter()
            .filter(|i| i.culprit_correct.is_some())
            .count(),
    );
    let normal_seconds = phases
        .iter()
        .filter(|p| p.expected.is_none())
        .map(|p| p.end - p.start)
        .sum();
    let precision = if records.is_empty() {
        0.0
    } else {
        tp as f64 / records.len() as f64
    };
    let recall = detected as f64 / n;
    Score {
        detector: detector.to_owned(),
        records: records.len(),
        true_positives: tp,
        precision,
        recall,
        f1: if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        },
        kind_accuracy: if with_records == 0 {
            0.0
        } else {
            incidents.iter().filter(|i| i.kind_correct).count() as f64 / with_records as f64
        },
        subjects_named: (
            incidents
                .iter()
                .filter(|i| i.subject_correct == Some(true))
                .count(),
            incidents
                .iter()
                .filter(|i| i.subject_correct.is_some())
                .count(),
        ),
        culprits_right,
        culprit_accuracy: if culprits_right.1 == 0 {
            0.0
        } else {
            culprits_right.0 as f64 / culprits_right.1 as f64
        },
        detected_without_subject: incidents
            .iter()
            .filter(|i| i.detected_without_subject)
            .map(|i| i.incident.clone())
            .collect(),
        max_cycles_to_detect: ttd.iter().copied().max(),
        mean_cycles_to_detect: (!ttd.is_empty())
            .then(|| ttd.iter().map(|&c| f64::from(c)).sum::<f64>() / ttd.len() as f64),
        normal_false_positives: normal_fp,
        normal_seconds,
        fp_run_false_positives: fp_run_fp,
        false_positive_kinds: fp_kinds,
        incidents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_counts_hits_misses_and_false_positives() {
        let phases = vec![
            Phase {
                held_out: false,
                name: "normal".into(),
                expected: None,
                subject: None,
                start: 0.0,
                end: 10.0,
            },
            Phase {
                held_out: false,
                name: "x".into(),
                expected: Some("storm".into()),
                subject: None,
                start: 10.0,
                end: 15.0,
            },
            Phase {
                held_out: false,
                name: "y".into(),
                expected: Some("spike".into()),
                subject: None,
                start: 20.0,
                end: 25.0,
            },
        ];
        let r = |kind: &str, start: f64| Record {
            kind: kind.into(),
            start,
            subject: None,
            culprit: None,
        };
        let records = vec![r("spike", 5.0), r("storm", 11.5), r("storm", 21.0)];
        let s = score("t", &records, &phases, 1.0, 2.0, "normal", Scope::All);
        assert_eq!(s.true_positives, 1);
        assert_eq!(s.normal_false_positives, 1);
        assert_eq!(s.fp_run_false_positives, 1);
        assert!((s.precision - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.recall, 0.5);
        assert_eq!(s.incidents[0].cycles_to_detect, Some(2));
        assert!(!s.incidents[1].kind_correct);
        assert!((s.f1 - 2.0 * (1.0 / 3.0) * 0.5 / (1.0 / 3.0 + 0.5)).abs() < 1e-9);

        // "y" held out: the tuned score leaves its record out entirely,
        // the held-out one keeps only it (and the normal load's).
        let mut phases = phases;
        phases[2].held_out = true;
        let tuned = score("t", &records, &phases, 1.0, 2.0, "normal", Scope::Tuned);
        assert_eq!((tuned.records, tuned.true_positives), (2, 1));
        assert_eq!(tuned.incidents.len(), 1);
        assert_eq!(tuned.recall, 1.0);
        let held = score("t", &records, &phases, 1.0, 2.0, "normal", Scope::HeldOut);
        assert_eq!((held.records, held.true_positives), (2, 0));
        assert_eq!(held.incidents.len(), 1);
        assert_eq!(held.recall, 0.0);
    }

    #[test]
    fn culprits_are_scored_and_a_detection_without_subject_is_reported() {
        let phase = |name: &str, subject: &str, start: f64| Phase {
            held_out: false,
            name: name.into(),
            expected: Some("flood".into()),
            subject: Some(subject.into()),
            start,
            end: start + 5.0,
        };
        let phases = vec![
            phase("right", "10.0.0.1", 0.0),
            phase("near miss", "10.0.0.1", 10.0),
            phase("unnamed", "stress-ng", 20.0),
            phase("by comm", "stress-ng", 30.0),
        ];
        let r = |start: f64, subject: Option<&str>, culprit: Option<&str>| Record {
            kind: "flood".into(),
            start,
            subject: subject.map(str::to_owned),
            culprit: culprit.map(str::to_owned),
        };
        let records = vec![
            r(1.0, Some("peer 10.0.0.1 sent"), Some("10.0.0.1")),
            r(11.0, Some("peer 10.0.0.10 sent"), Some("10.0.0.10")),
            r(21.0, None, None),
            r(31.0, Some("process 7"), Some("7 stress-ng-fork /x")),
        ];
        let s = score("t", &records, &phases, 1.0, 2.0, "none", Scope::All);
        assert_eq!(s.culprits_right, (2, 4));
        assert_eq!(s.culprit_accuracy, 0.5);
        assert_eq!(s.incidents[1].culprit_correct, Some(false));
        assert_eq!(s.detected_without_subject, vec!["unnamed".to_owned()]);
    }

    #[test]
    fn two_faults_in_one_window_are_scored_each_on_its_own() {
        let fault = |name: &str, kind: &str| Phase {
            held_out: false,
            name: name.into(),
            expected: Some(kind.into()),
            subject: None,
            start: 0.0,
            end: 6.0,
        };
        let phases = vec![fault("both", "flood"), fault("both (stall)", "stall")];
        let r = |kind: &str, start: f64| Record {
            kind: kind.into(),
            start,
            subject: None,
            culprit: None,
        };
        // The stall is named first: it is not the flood's first record.
        let records = vec![r("stall", 1.0), r("flood", 2.0), r("storm", 3.0)];
        let s = score("t", &records, &phases, 1.0, 2.0, "none", Scope::All);
        assert_eq!((s.records, s.true_positives), (3, 2));
        assert_eq!(s.recall, 1.0);
        for o in &s.incidents {
            assert!(o.detected && o.kind_correct, "{o:?}");
        }
        assert_eq!(s.incidents[0].cycles_to_detect, Some(2));
        assert_eq!(s.incidents[0].named, vec!["flood", "storm"]);
        assert_eq!(s.incidents[1].named, vec!["stall", "storm"]);
        // With the flood unnamed, only the stall is a hit.
        let s = score("t", &records[..1], &phases, 1.0, 2.0, "none", Scope::All);
        assert_eq!((s.true_positives, s.recall), (1, 0.5));
    }
}
