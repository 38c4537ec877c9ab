//! Latency distribution of one stage over the whole run: the bins of an HDR
//! histogram with 3 significant digits (percentiles within 0.1% of the
//! exact value), stored sparsely ([`SparseHdr`]), plus exact count, min,
//! max and sum.
//!
//! Memory: 512 bytes per block of 64 bins that ever held a value, and 2
//! bytes per block up to the largest: 8-16 KiB for durations that vary 2x,
//! +512 bytes per outlier far from the rest, never more than
//! [`SparseHdr::MAX_HEAP_BYTES`] (459 KiB, every bin of `u64`).
use super::{loghist::QUANTILES, snapshot::Percentiles, sparse_hdr::SparseHdr};

/// Durations over the whole run (see the module doc for precision and size).
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: SparseHdr,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// Empty (nothing on the heap until a value is added).
    pub fn new() -> Self {
        LatencyHistogram {
            hist: SparseHdr::default(),
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Adds one duration (any value; 0 counts as 1 in the percentiles).
    pub fn record(&mut self, dur_ns: u64) {
        self.hist.record_n(dur_ns.max(1), 1);
        self.count += 1;
        self.sum_ns += u128::from(dur_ns);
        self.min_ns = self.min_ns.min(dur_ns);
        self.max_ns = self.max_ns.max(dur_ns);
    }

    /// Adds `n` durations `v` (a bin's middle) to the counts, min and
    /// max, not to the sum (see [`LatencyHistogram::add_sum`]).
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.hist.record_n(v.max(1), n);
        self.count += n;
        self.min_ns = self.min_ns.min(v);
        self.max_ns = self.max_ns.max(v);
    }

    /// Adds to the sum (of durations added by [`LatencyHistogram::record_n`]).
    pub fn add_sum(&mut self, s: u64) {
        self.sum_ns += u128::from(s);
    }

    /// Number of durations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the durations, saturated to `u64`.
    pub fn sum(&self) -> u64 {
        u64::try_from(self.sum_ns).unwrap_or(u64::MAX)
    }

    /// The bins (read by [`super::buckets`]).
    pub(super) fn bins(&self) -> &SparseHdr {
        &self.hist
    }

    /// Bytes held on the heap (the histogram's counters).
    pub fn heap_bytes(&self) -> usize {
        self.hist.heap_bytes()
    }

    /// Forgets every duration.
    pub fn reset(&mut self) {
        self.hist.clear();
        self.count = 0;
        self.sum_ns = 0;
        self.min_ns = u64::MAX;
        self.max_ns = 0;
    }

    /// Value at quantile `q` (0..=1): the highest value of the bin holding
    /// the value of rank `max(1, ceil(q * count))`, within the exact min
    /// and max (as an HDR histogram's `value_at_quantile`); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        if q <= 0.0 {
            return self.min_ns;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        self.hist
            .at_rank(rank)
            .unwrap_or(self.max_ns)
            .clamp(self.min_ns, self.max_ns)
    }

    /// Count, exact min/mean/max and the quantiles of [`Percentiles`].
    pub fn percentiles(&self) -> Percentiles {
        if self.count == 0 {
            return Percentiles::default();
        }
        let [p50_ns, p90_ns, p95_ns, p99_ns, p999_ns] = QUANTILES.map(|q| self.quantile(q));
        Percentiles {
            count: self.count,
            min_ns: self.min_ns,
            mean_ns: (self.sum_ns / u128::from(self.count)) as u64,
            p50_ns,
            p90_ns,
            p95_ns,
            p99_ns,
            p999_ns,
            max_ns: self.max_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut h = LatencyHistogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.percentiles();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min_ns, 1000);
        assert_eq!(s.max_ns, 1_000_000);
        assert_eq!(s.mean_ns, 500_500);
        for (got, want) in [
            (s.p50_ns, 500_000),
            (s.p90_ns, 900_000),
            (s.p95_ns, 950_000),
            (s.p99_ns, 990_000),
            (s.p999_ns, 999_000),
        ] {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.001, "{got} vs {want}");
        }
    }

    #[test]
    fn empty_and_reset() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.percentiles().count, 0);
        h.record(5);
        h.reset();
        assert_eq!(h.percentiles().max_ns, 0);
        assert_eq!(h.quantile(0.5), 0);
    }

    #[test]
    fn values_beyond_an_hour_still_record() {
        let mut h = LatencyHistogram::new();
        h.record(7_200_000_000_000);
        assert_eq!(h.percentiles().max_ns, 7_200_000_000_000);
    }

    #[test]
    fn grows_with_the_largest_value_within_its_bound() {
        let mut h = LatencyHistogram::new();
        h.record(1_000);
        assert!(h.heap_bytes() <= 1 << 10, "{}", h.heap_bytes());
        h.record(1_000_000_000);
        assert!(h.heap_bytes() <= 3 << 10, "{}", h.heap_bytes());
        h.record(u64::MAX);
        h.record(0);
        assert!(h.heap_bytes() <= 4 << 10, "{}", h.heap_bytes());
        assert_eq!(h.sum(), 1_000_001_000u64.saturating_add(u64::MAX));
        let p = h.percentiles();
        assert_eq!((p.count, p.min_ns, p.max_ns), (4, 0, u64::MAX));
    }

    #[test]
    fn percentiles_within_a_tenth_of_a_percent() {
        let mut h = LatencyHistogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 37);
        }
        let p = h.percentiles();
        for (got, want) in [
            (p.p50_ns, 50_000 * 37),
            (p.p95_ns, 95_000 * 37),
            (p.p999_ns, 99_900 * 37),
        ] {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.001, "{got} vs {want}");
        }
    }
}
