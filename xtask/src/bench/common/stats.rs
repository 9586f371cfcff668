//! Summary statistics and the round-robin schedule every scenario uses.

use serde::Serialize;

/// min / median / max of a set of samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// NaN samples (a ratio with a zero denominator) are left out.
    pub fn of(samples: &[f64]) -> Summary {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Summary {
                n,
                min: f64::NAN,
                median: f64::NAN,
                max: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            n,
            min: v[0],
            median,
            max: v[n - 1],
        }
    }
}

/// The median of `samples` (NaN when there are none).
pub fn median(samples: &[f64]) -> f64 {
    Summary::of(samples).median
}

/// `f(a[i], b[i])` for each round.
pub fn per_round(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// `a / b` per round (NaN where b is 0).
pub fn ratio(a: &[f64], b: &[f64]) -> Vec<f64> {
    per_round(a, b, |x, y| if y == 0.0 { f64::NAN } else { x / y })
}

/// Runs `measure` for every variant in every round, the variants in a
/// rotated order each round so that drift on the machine hits them all
/// alike; returns the results as `[variant][round]`. `before_round` runs
/// first in each round (e.g. to wait until the machine is quiet).
pub fn round_robin<V, T>(
    rounds: usize,
    variants: &[V],
    mut before_round: impl FnMut(usize) -> anyhow::Result<()>,
    mut measure: impl FnMut(&V) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Vec<T>>> {
    let n = variants.len();
    let mut out: Vec<Vec<T>> = (0..n).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds {
        before_round(round)?;
        for k in 0..n {
            let i = (round + k) % n;
            out[i].push(measure(&variants[i])?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 2.0, 3.0, 3));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Summary::of(&[1.0, f64::NAN]).n, 1);
        assert!(Summary::of(&[]).median.is_nan());
    }

    #[test]
    fn every_variant_every_round_in_rotated_order() {
        let mut order = Vec::new();
        let out = round_robin(
            3,
            &['a', 'b', 'c'],
            |_| Ok(()),
            |v| {
                order.push(*v);
                Ok(*v)
            },
        )
        .unwrap();
        assert_eq!(order.iter().collect::<String>(), "abcbcacab");
        assert_eq!(out, vec![vec!['a'; 3], vec!['b'; 3], vec!['c'; 3]]);
    }
}
