//! Metric families rendered from a collector snapshot on each scrape:
//! [`Family`] builds one at a time (counters, gauges, histograms from the
//! kernel's log2 latency slots, summaries without quantiles for a sum and
//! count). Shared by the exposition, the MAPE-K loop
//! and each signal's own families.

use agent_common::syscalls::{LATENCY_SLOTS, latency_slot_upper_ns};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Summary,
};

/// Builds one metric family at a time.
pub struct Family {
    family: MetricFamily,
    kind: MetricType,
}

impl Family {
    pub fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Self { family, kind }
    }

    fn labels(labels: &[(&str, &str)]) -> Vec<LabelPair> {
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect()
    }

    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut metric = Metric::from_label(Self::labels(labels));
        match self.kind {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                metric.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                metric.set_gauge(g);
            }
        }
        self.family.mut_metric().push(metric);
    }

    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) {
        let mut metric = Metric::from_label(Self::labels(labels));
        let mut h = Histogram::default();
        let mut cumulative = 0;
        h.set_bucket(
            buckets
                .iter()
                .map(|&(upper, n)| {
                    cumulative += n;
                    let mut b = Bucket::default();
                    b.set_upper_bound(upper);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect(),
        );
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        metric.set_histogram(h);
        self.family.mut_metric().push(metric);
    }

    /// A summary with no quantiles: `_sum` and `_count` only, the
    /// convention for a total and the number of observations in it.
    pub fn summary(&mut self, labels: &[(&str, &str)], count: u64, sum: f64) {
        let mut metric = Metric::from_label(Self::labels(labels));
        let mut s = Summary::default();
        s.set_sample_count(count);
        s.set_sample_sum(sum);
        metric.set_summary(s);
        self.family.mut_metric().push(metric);
    }

    pub fn done(self, out: &mut Vec<MetricFamily>) {
        if !self.family.get_metric().is_empty() {
            out.push(self.family);
        }
    }
}

/// Histogram buckets (upper bound in seconds, count) from the kernel's log2
/// slots. The last slot is open-ended: the encoder's own +Inf bucket (equal
/// to the sample count) covers it.
pub fn log2_buckets(slots: &[u64; LATENCY_SLOTS]) -> Vec<(f64, u64)> {
    (0..LATENCY_SLOTS - 1)
        .map(|slot| (latency_slot_upper_ns(slot) as f64 / 1e9, slots[slot]))
        .collect()
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn a_summary_without_quantiles_is_a_sum_and_a_count() {
        let mut out = Vec::new();
        let mut f = Family::new("rtt_seconds", "RTT", MetricType::SUMMARY);
        f.summary(&[("peer", "10.0.0.1")], 4, 0.5);
        f.done(&mut out);
        let mut text = Vec::new();
        TextEncoder::new().encode(&out, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "# HELP rtt_seconds RTT\n# TYPE rtt_seconds summary\n\
             rtt_seconds_sum{peer=\"10.0.0.1\"} 0.5\nrtt_seconds_count{peer=\"10.0.0.1\"} 4\n"
        );
    }
}
