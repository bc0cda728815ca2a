//! Latency histograms: recorded in microseconds, shipped between processes as base64 text of
//! HdrHistogram's V2 encoding, merged by the parent. Pure.

use anyhow::{Context as _, Result};
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency told apart: anything slower is recorded as this (one minute).
const MAX_MICROS: u64 = 60_000_000;
/// Three significant digits: 0.1 % resolution at any latency.
const SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records `received_ns - sent_ns`. Clocks are the same machine's, so a negative latency is
/// only rounding: it is recorded as 0.
pub fn record(histogram: &mut Histogram<u64>, sent_ns: u64, received_ns: u64) {
    histogram.saturating_record(received_ns.saturating_sub(sent_ns) / 1_000);
}

pub fn encode(histogram: &Histogram<u64>) -> Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot serialize the latency histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn decode(text: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("latency histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("cannot decode the latency histogram: {e:?}"))
}

/// Adds `other` into `into` (both come from [`new_histogram`], so they always fit).
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) -> Result<()> {
    into.add(other)
        .map_err(|e| anyhow::anyhow!("cannot merge latency histograms: {e:?}"))
}

/// The percentiles reported, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Summary {
    pub fn of(histogram: &Histogram<u64>) -> Summary {
        if histogram.is_empty() {
            return Summary::default();
        }
        Summary {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_microseconds_and_clamps() {
        let mut h = new_histogram();
        record(&mut h, 1_000_000, 1_250_000); // 250 µs
        record(&mut h, 2_000, 1_000); // clock rounding: 0
        record(&mut h, 0, 3_600 * 1_000_000_000); // an hour: clamped
        assert_eq!(h.len(), 3);
        assert_eq!(h.min(), 0);
        assert!(h.equivalent(h.max(), MAX_MICROS));
        assert!(h.equivalent(h.value_at_quantile(0.5), 250));
    }

    #[test]
    fn encode_decode_merge() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=1000 {
            a.record(v).unwrap();
        }
        for _ in 0..1000 {
            b.record(5000).unwrap();
        }
        let a2 = decode(&encode(&a).unwrap()).unwrap();
        assert_eq!(a2, a);
        let mut all = new_histogram();
        merge(&mut all, &a2).unwrap();
        merge(&mut all, &decode(&encode(&b).unwrap()).unwrap()).unwrap();
        let s = Summary::of(&all);
        assert_eq!(s.count, 2000);
        assert!(all.equivalent(s.p50, 1000), "{s:?}");
        assert!(all.equivalent(s.p90, 5000), "{s:?}");
        assert!(all.equivalent(s.max, 5000), "{s:?}");
        assert!(decode("not base64!").is_err());
        assert!(decode("AAAA").is_err());
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Summary::of(&new_histogram()), Summary::default());
    }
}
