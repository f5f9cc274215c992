//! Lock-free counters and histograms for `GET /metrics`; the Prometheus client library encodes them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds, in seconds, of latency buckets: 0.5 ms to 10 s.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The client library encodes it as any histogram of its own; observing it takes no lock.
impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let mut buckets = [(0.0, 0); BUCKETS.len() + 1];
        for (i, (bucket, c)) in buckets.iter_mut().zip(&self.counts).enumerate() {
            *bucket = (
                BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                c.load(Ordering::Relaxed),
            );
        }
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// For families of histograms kept elsewhere.
impl EncodeMetric for &Histogram {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        (**self).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_in_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_with_unit(
            "x",
            "help",
            prometheus_client::registry::Unit::Seconds,
            Shared(std::sync::Arc::new(h)),
        );
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        for line in [
            "x_seconds_bucket{le=\"0.0005\"} 1\n",
            "x_seconds_bucket{le=\"0.005\"} 2\n",
            "x_seconds_bucket{le=\"10\"} 2\n",
            "x_seconds_bucket{le=\"+Inf\"} 3\n",
            "x_seconds_count 3\n",
            "x_seconds_sum 20.0033\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
    }

    /// The registry takes metrics it may share with the code that counts.
    #[derive(Debug)]
    struct Shared(std::sync::Arc<Histogram>);

    impl EncodeMetric for Shared {
        fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
            self.0.encode(encoder)
        }

        fn metric_type(&self) -> MetricType {
            MetricType::Histogram
        }
    }
}
