//! Metric families rendered from a collector snapshot on each scrape:
//! [`Family`] builds one at a time (counters, gauges, histograms from the
//! kernel's log2 latency slots). Shared by the exposition, the MAPE-K loop
//! and each signal's own families.

use agent_common::syscalls::{LATENCY_SLOTS, latency_slot_upper_ns};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
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
