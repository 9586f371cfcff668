//! The detectors Sonde is compared with, replayed on the same feature
//! vectors (from `/api/v1/features`) with the same naming rules, so each
//! differs from Sonde only in how it decides that a feature's value is
//! abnormal: a fixed-window 3-sigma rule, a robust median/MAD rule over a
//! sliding window, and Netdata's per-metric k-means (its defaults, scaled
//! to the evaluation's length). None of them names a culprit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::score::{Cycle, Naming, Record};

/// Decides, per feature and cycle, whether a value is abnormal; keeps
/// whatever history it needs.
pub trait Judge {
    /// For the reports.
    fn name(&self) -> String;
    fn abnormal(&mut self, feature: &str, x: f64) -> bool;
}

/// Runs `judge` over `cycles`: a feature's kind fires when its value is
/// abnormal; records open and close like Sonde's (closed after
/// `quiet_cycles` quiet cycles; a cause absorbs its symptoms).
pub fn replay(cycles: &[Cycle], naming: &Naming, judge: &mut dyn Judge) -> Vec<Record> {
    let mut active: BTreeMap<String, u32> = BTreeMap::new();
    let mut records = Vec::new();
    for cycle in cycles {
        let mut firing = BTreeSet::new();
        for (feature, &x) in &cycle.features {
            let Some(kind) = naming.kinds.get(feature) else {
                continue;
            };
            if judge.abnormal(feature, x) {
                firing.insert(kind.clone());
            }
        }
        let active_kinds: BTreeSet<String> = active.keys().cloned().collect();
        let named = naming.name(firing, &active_kinds);
        for quiet in active.values_mut() {
            *quiet += 1;
        }
        for kind in named {
            if active.insert(kind.clone(), 0).is_none() {
                records.push(Record {
                    kind,
                    start: cycle.time,
                    subject: None,
                    culprit: None,
                });
            }
        }
        active.retain(|_, quiet| *quiet < naming.quiet_cycles);
    }
    records
}

/// Every comparator, as the evaluation runs them.
pub fn all() -> Vec<Box<dyn Judge>> {
    vec![
        Box::new(ThreeSigma::new(60)),
        Box::new(MedianMad::new(60, 3.5)),
        Box::new(KMeans::netdata()),
    ]
}

/// The last `window` values of each feature (every value, incidents
/// included, as a fixed window does).
#[derive(Default)]
struct Windows {
    window: usize,
    values: BTreeMap<String, VecDeque<f64>>,
}

impl Windows {
    /// The full window before `x` (None while it fills), then `x` added.
    fn push(&mut self, feature: &str, x: f64) -> Option<Vec<f64>> {
        let h = self.values.entry(feature.to_owned()).or_default();
        let full = (h.len() == self.window).then(|| h.iter().copied().collect());
        if h.len() == self.window {
            h.pop_front();
        }
        h.push_back(x);
        full
    }
}

/// Above mean + 3 standard deviations of the last `window` values.
pub struct ThreeSigma(Windows);

impl ThreeSigma {
    pub fn new(window: usize) -> ThreeSigma {
        ThreeSigma(Windows {
            window,
            ..Windows::default()
        })
    }
}

impl Judge for ThreeSigma {
    fn name(&self) -> String {
        format!("3-sigma, {}-cycle window", self.0.window)
    }

    fn abnormal(&mut self, feature: &str, x: f64) -> bool {
        let Some(h) = self.0.push(feature, x) else {
            return false;
        };
        let n = h.len() as f64;
        let mean = h.iter().sum::<f64>() / n;
        let var = h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        x > mean + 3.0 * var.sqrt()
    }
}

/// The robust rule: a modified z-score (x − median) / (1.4826 · MAD) above
/// `threshold` (3.5, Iglewicz and Hoaglin's cut-off) over the last `window`
/// values. Where more than half the window is one value (MAD 0), the mean
/// absolute deviation × 1.2533 stands in for 1.4826 · MAD (the usual
/// fallback); a window of one value throughout fires on any rise.
pub struct MedianMad {
    windows: Windows,
    threshold: f64,
}

impl MedianMad {
    pub fn new(window: usize, threshold: f64) -> MedianMad {
        MedianMad {
            windows: Windows {
                window,
                ..Windows::default()
            },
            threshold,
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Judge for MedianMad {
    fn name(&self) -> String {
        format!(
            "median/MAD, {}-cycle window, z > {}",
            self.windows.window, self.threshold
        )
    }

    fn abnormal(&mut self, feature: &str, x: f64) -> bool {
        let Some(mut h) = self.windows.push(feature, x) else {
            return false;
        };
        let m = median(&mut h);
        let mut dev: Vec<f64> = h.iter().map(|v| (v - m).abs()).collect();
        let mad = median(&mut dev);
        let scale = if mad > 0.0 {
            1.4826 * mad
        } else {
            1.2533 * dev.iter().sum::<f64>() / dev.len() as f64
        };
        if scale == 0.0 {
            return x > m;
        }
        (x - m) / scale > self.threshold
    }
}

/// Netdata's per-metric detector (its `[ml]` defaults: values differenced
/// once, smoothed over 3, the last 6 as one vector; k-means with k = 2;
/// a point is anomalous when its distance to the nearest centre, scaled
/// between the least and the greatest distance seen in training, reaches
/// 0.99 in every one of the feature's last 18 models). Netdata trains on
/// up to 6 hours every 3 hours; the evaluation lasts minutes, so a model
/// is trained on the last `train_max` values every `train_every` cycles,
/// once `train_min` are there. Netdata's own is dlib's; a 2-means on a few
/// hundred six-value vectors is short enough to write here.
pub struct KMeans {
    train_min: usize,
    train_max: usize,
    train_every: usize,
    threshold: f64,
    features: BTreeMap<String, KMeansFeature>,
}

const DIFF: usize = 1;
const SMOOTH: usize = 3;
const LAG: usize = 5;
const DIM: usize = LAG + 1;

#[derive(Default)]
struct KMeansFeature {
    raw: VecDeque<f64>,
    /// Preprocessed vectors, newest last, at most `train_max`.
    vectors: VecDeque<[f64; DIM]>,
    since_training: usize,
    /// The newest last, at most `MODELS`; all must call a point anomalous.
    models: VecDeque<Model>,
}

const MODELS: usize = 18;

struct Model {
    centres: [[f64; DIM]; 2],
    min: f64,
    max: f64,
}

impl KMeans {
    pub fn netdata() -> KMeans {
        KMeans {
            train_min: 60,
            train_max: 600,
            train_every: 60,
            threshold: 0.99,
            features: BTreeMap::new(),
        }
    }
}

fn distance(a: &[f64; DIM], b: &[f64; DIM]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

impl Model {
    /// Lloyd's algorithm from the two points furthest apart along the
    /// first vector's distances (deterministic, so runs replay alike).
    fn train(data: &[[f64; DIM]]) -> Model {
        let first = data[0];
        let far = *data
            .iter()
            .max_by(|a, b| distance(a, &first).total_cmp(&distance(b, &first)))
            .unwrap_or(&first);
        let mut centres = [first, far];
        for _ in 0..1000 {
            let mut sums = [[0.0; DIM]; 2];
            let mut counts = [0usize; 2];
            for p in data {
                let c = usize::from(distance(p, &centres[1]) < distance(p, &centres[0]));
                counts[c] += 1;
                for (s, v) in sums[c].iter_mut().zip(p) {
                    *s += v;
                }
            }
            let mut next = centres;
            for c in 0..2 {
                if counts[c] > 0 {
                    for d in 0..DIM {
                        next[c][d] = sums[c][d] / counts[c] as f64;
                    }
                }
            }
            if next == centres {
                break;
            }
            centres = next;
        }
        let mut model = Model {
            centres,
            min: 0.0,
            max: 0.0,
        };
        let scores: Vec<f64> = data.iter().map(|p| model.distance(p)).collect();
        model.min = scores.iter().copied().fold(f64::INFINITY, f64::min);
        model.max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        model
    }

    fn distance(&self, p: &[f64; DIM]) -> f64 {
        distance(p, &self.centres[0]).min(distance(p, &self.centres[1]))
    }

    /// The distance scaled between training's least and greatest.
    fn score(&self, p: &[f64; DIM]) -> f64 {
        let range = self.max - self.min;
        if range <= 0.0 {
            return if self.distance(p) > self.max {
                1.0
            } else {
                0.0
            };
        }
        (self.distance(p) - self.min) / range
    }
}

impl KMeansFeature {
    /// The newest preprocessed vector, once enough values are in.
    fn preprocess(&mut self, x: f64) -> Option<[f64; DIM]> {
        self.raw.push_back(x);
        // DIM smoothed differences need DIM + SMOOTH - 1 differences.
        let need = DIM + SMOOTH - 1 + DIFF;
        if self.raw.len() > need {
            self.raw.pop_front();
        }
        if self.raw.len() < need {
            return None;
        }
        let raw: Vec<f64> = self.raw.iter().copied().collect();
        let diffs: Vec<f64> = raw.windows(DIFF + 1).map(|w| w[DIFF] - w[0]).collect();
        let smooth: Vec<f64> = diffs
            .windows(SMOOTH)
            .map(|w| w.iter().sum::<f64>() / SMOOTH as f64)
            .collect();
        let mut v = [0.0; DIM];
        v.copy_from_slice(&smooth[smooth.len() - DIM..]);
        Some(v)
    }
}

impl Judge for KMeans {
    fn name(&self) -> String {
        format!(
            "k-means (Netdata's), retrained every {} cycles on {}",
            self.train_every, self.train_max
        )
    }

    fn abnormal(&mut self, feature: &str, x: f64) -> bool {
        let f = self.features.entry(feature.to_owned()).or_default();
        let Some(v) = f.preprocess(x) else {
            return false;
        };
        let anomalous =
            !f.models.is_empty() && f.models.iter().all(|m| m.score(&v) >= self.threshold);
        f.vectors.push_back(v);
        if f.vectors.len() > self.train_max {
            f.vectors.pop_front();
        }
        f.since_training += 1;
        if f.vectors.len() >= self.train_min
            && (f.models.is_empty() || f.since_training >= self.train_every)
        {
            let data: Vec<[f64; DIM]> = f.vectors.iter().copied().collect();
            f.models.push_back(Model::train(&data));
            if f.models.len() > MODELS {
                f.models.pop_front();
            }
            f.since_training = 0;
        }
        anomalous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A noisy level, then a jump: each judge must call the jump and stay
    /// quiet on the noise.
    fn fires_on_a_jump_only(judge: &mut dyn Judge) {
        // A fixed pseudo-random sequence (an LCG), uniform in 100..113.
        let mut state: u64 = 42;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            100.0 + (state >> 33) as f64 / (1u64 << 31) as f64 * 13.0
        };
        let mut fired_in_noise = 0;
        for _ in 0..700 {
            if judge.abnormal("f", noise()) {
                fired_in_noise += 1;
            }
        }
        // Netdata's own anomaly rate on a steady metric is a few per cent.
        assert!(
            fired_in_noise <= 21,
            "{}: {fired_in_noise} of 700 noisy values called abnormal",
            judge.name()
        );
        let jumped = (0..3).any(|_| judge.abnormal("f", 1000.0));
        assert!(jumped, "{}: missed a tenfold jump", judge.name());
    }

    #[test]
    fn every_comparator_fires_on_a_jump_and_not_on_noise() {
        for mut judge in all() {
            fires_on_a_jump_only(judge.as_mut());
        }
    }

    #[test]
    fn median_mad_ignores_an_outlier_that_would_move_a_mean() {
        let window = [10.0, 12.0, 11.0, 1000.0, 9.0];
        let mut j = MedianMad::new(5, 3.5);
        for x in window {
            j.abnormal("f", x);
        }
        // One outlier in the window: the median (11) and MAD (1) barely
        // move, so 100 is abnormal, where mean + 3 sd is about 1,400.
        assert!(!j.abnormal("f", 14.0));
        assert!(j.abnormal("f", 100.0));
        let mut sigma = ThreeSigma::new(5);
        for x in window {
            sigma.abnormal("f", x);
        }
        assert!(!sigma.abnormal("f", 100.0));
    }

    #[test]
    fn kmeans_preprocesses_as_netdata_does() {
        let mut f = KMeansFeature::default();
        let mut last = None;
        for x in 0..20 {
            last = f.preprocess(f64::from(x * x));
        }
        // Differences of x² are 2x − 1; smoothed over 3 → 2x − 3 at x.
        let v = last.expect("a vector once enough values are in");
        let want: Vec<f64> = (14..20).map(|x| f64::from(2 * x - 3)).collect();
        assert_eq!(v.to_vec(), want);
    }

    #[test]
    fn replay_opens_one_record_per_episode_and_absorbs_symptoms() {
        let naming = Naming {
            kinds: [("a", "storm"), ("b", "spike")]
                .iter()
                .map(|(f, k)| ((*f).to_owned(), (*k).to_owned()))
                .collect(),
            explains: vec![("storm".into(), vec!["spike".into()])],
            quiet_cycles: 2,
        };
        let cycles: Vec<Cycle> = (0..30)
            .map(|i| {
                let x = if (20..23).contains(&i) { 100.0 } else { 1.0 };
                Cycle {
                    time: f64::from(i),
                    features: [("a".to_owned(), x), ("b".to_owned(), x)]
                        .into_iter()
                        .collect(),
                }
            })
            .collect();
        let records = replay(&cycles, &naming, &mut ThreeSigma::new(10));
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].kind, "storm");
        assert_eq!(records[0].start, 20.0);
    }
}
