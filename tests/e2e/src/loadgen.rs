//! An open-loop HTTP/1.1 load generator for the fixed-rate benchmark.
//!
//! `wrk` is closed-loop: a slow response delays the next request, so its
//! latencies hide queueing (coordinated omission). Here requests are
//! *scheduled* at a fixed rate, independent of responses, and each latency is
//! measured from the request's scheduled time: when every connection is busy,
//! the wait shows up in the figures.

use std::time::Duration;

/// When request `i` (from 0) is due, as an offset from the start, at `rate`
/// requests per second.
pub fn scheduled_offset(i: u64, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::MAX;
    }
    Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate)
}

/// Latency percentiles over recorded samples (microseconds).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// 50th percentile.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

/// The nearest-rank percentile `q` (0 < q ≤ 1) of sorted samples.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises `samples` (sorted in place).
pub fn summarise(samples: &mut [u64]) -> Summary {
    samples.sort_unstable();
    Summary {
        count: samples.len(),
        p50_us: percentile(samples, 0.50),
        p90_us: percentile(samples, 0.90),
        p99_us: percentile(samples, 0.99),
        p999_us: percentile(samples, 0.999),
        max_us: samples.last().copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_at_the_rate() {
        assert_eq!(scheduled_offset(0, 1000), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 1000), Duration::from_millis(1));
        assert_eq!(scheduled_offset(1000, 1000), Duration::from_secs(1));
        assert_eq!(scheduled_offset(3, 3), Duration::from_secs(1));
        assert_eq!(scheduled_offset(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(scheduled_offset(5, 0), Duration::MAX);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<u64> = (1..=1000).rev().collect();
        let sum = summarise(&mut s);
        assert_eq!(sum.count, 1000);
        assert_eq!(sum.p50_us, 500);
        assert_eq!(sum.p90_us, 900);
        assert_eq!(sum.p99_us, 990);
        assert_eq!(sum.p999_us, 999);
        assert_eq!(sum.max_us, 1000);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[1, 2], 0.5), 1);
        assert_eq!(percentile(&[1, 2], 0.51), 2);
    }
}
