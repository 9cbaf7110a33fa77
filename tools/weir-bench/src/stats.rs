//! Counters and latency histograms, collected per bench thread for one
//! second at a time and merged by the main thread.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, 1 µs to 10 minutes, 3 significant digits.
const LATENCY_MAX_MICROS: u64 = 600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// Counters and histograms of one thread for one interval.
#[derive(Clone)]
pub struct Interval {
    pub produced_messages: u64,
    pub produced_bytes: u64,
    pub consumed_messages: u64,
    pub consumed_bytes: u64,
    /// Bytes written to and read from broker connections.
    pub wire_sent_bytes: u64,
    pub wire_received_bytes: u64,
    /// Kafka error code (or -1 for errors without one) → failed messages or requests.
    pub errors: BTreeMap<i16, u64>,
    pub produce_latency: Histogram<u64>,
    pub fetch_latency: Histogram<u64>,
    pub end_to_end_latency: Histogram<u64>,
}

impl Default for Interval {
    fn default() -> Self {
        Interval {
            produced_messages: 0,
            produced_bytes: 0,
            consumed_messages: 0,
            consumed_bytes: 0,
            wire_sent_bytes: 0,
            wire_received_bytes: 0,
            errors: BTreeMap::new(),
            produce_latency: new_histogram(),
            fetch_latency: new_histogram(),
            end_to_end_latency: new_histogram(),
        }
    }
}

impl Interval {
    pub fn add(&mut self, other: &Interval) {
        self.produced_messages += other.produced_messages;
        self.produced_bytes += other.produced_bytes;
        self.consumed_messages += other.consumed_messages;
        self.consumed_bytes += other.consumed_bytes;
        self.wire_sent_bytes += other.wire_sent_bytes;
        self.wire_received_bytes += other.wire_received_bytes;
        for (code, count) in &other.errors {
            *self.errors.entry(*code).or_default() += count;
        }
        self.produce_latency.add(&other.produce_latency).expect("histograms share bounds");
        self.fetch_latency.add(&other.fetch_latency).expect("histograms share bounds");
        self.end_to_end_latency.add(&other.end_to_end_latency).expect("histograms share bounds");
    }

    pub fn record_error(&mut self, code: Option<i16>, count: u64) {
        *self.errors.entry(code.unwrap_or(-1)).or_default() += count;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Records `micros` into `histogram`, clamping to its range.
pub fn record_micros(histogram: &mut Histogram<u64>, micros: u64) {
    let _ = histogram.record(micros.clamp(1, LATENCY_MAX_MICROS));
}

/// Percentiles of one latency kind, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub p99_99_ms: f64,
    pub max_ms: f64,
    /// (percentile, latency ms) pairs for plotting.
    #[serde(default)]
    pub curve: Vec<(f64, f64)>,
}

impl Percentiles {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        let curve = CURVE_PERCENTILES.iter().map(|percentile| (*percentile, ms(percentile / 100.0))).collect();
        Percentiles {
            count: histogram.len(),
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p99_9_ms: ms(0.999),
            p99_99_ms: ms(0.9999),
            max_ms: histogram.max() as f64 / 1000.0,
            curve,
        }
    }
}

const CURVE_PERCENTILES: [f64; 17] =
    [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 99.9995, 99.9999, 100.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_merge_counts_and_histograms() {
        let mut first = Interval { produced_messages: 10, ..Interval::default() };
        first.record_error(Some(6), 2);
        record_micros(&mut first.produce_latency, 1000);
        let mut second = Interval { produced_messages: 5, ..Interval::default() };
        second.record_error(Some(6), 1);
        second.record_error(None, 1);
        record_micros(&mut second.produce_latency, 3000);

        first.add(&second);
        assert_eq!(first.produced_messages, 15);
        assert_eq!(first.errors.get(&6), Some(&3));
        assert_eq!(first.errors.get(&-1), Some(&1));
        let percentiles = Percentiles::from_histogram(&first.produce_latency);
        assert_eq!(percentiles.count, 2);
        assert!((percentiles.max_ms - 3.0).abs() < 0.01, "{percentiles:?}");
        assert!((percentiles.p50_ms - 1.0).abs() < 0.01, "{percentiles:?}");
    }
}
