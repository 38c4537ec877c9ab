//! Latency distribution of one stage: an HDR histogram (3 significant
//! digits, so percentiles are within 0.1% of the exact value) plus exact
//! count, min, max and sum.
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

/// The numbers users read: counts and nanosecond percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        // 1 ns .. 1 hour, auto-resizing beyond; 3 significant digits.
        let mut hist = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("static histogram bounds are valid");
        hist.auto(true);
        LatencyHistogram {
            hist,
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    pub fn record(&mut self, dur_ns: u64) {
        // With auto-resize on, recording cannot fail.
        let _ = self.hist.record(dur_ns.max(1));
        self.count += 1;
        self.sum_ns += u128::from(dur_ns);
        self.min_ns = self.min_ns.min(dur_ns);
        self.max_ns = self.max_ns.max(dur_ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn reset(&mut self) {
        self.hist.reset();
        self.count = 0;
        self.sum_ns = 0;
        self.min_ns = u64::MAX;
        self.max_ns = 0;
    }

    /// Value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        self.hist
            .value_at_quantile(q)
            .clamp(self.min_ns, self.max_ns)
    }

    pub fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary {
                count: 0,
                min_ns: 0,
                mean_ns: 0,
                p50_ns: 0,
                p90_ns: 0,
                p99_ns: 0,
                max_ns: 0,
            };
        }
        LatencySummary {
            count: self.count,
            min_ns: self.min_ns,
            mean_ns: (self.sum_ns / u128::from(self.count)) as u64,
            p50_ns: self.quantile(0.50),
            p90_ns: self.quantile(0.90),
            p99_ns: self.quantile(0.99),
            max_ns: self.max_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut h = LatencyHistogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min_ns, 1000);
        assert_eq!(s.max_ns, 1_000_000);
        assert_eq!(s.mean_ns, 500_500);
        for (got, want) in [
            (s.p50_ns, 500_000),
            (s.p90_ns, 900_000),
            (s.p99_ns, 990_000),
        ] {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.001, "{got} vs {want}");
        }
    }

    #[test]
    fn empty_and_reset() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.summary().count, 0);
        h.record(5);
        h.reset();
        assert_eq!(h.summary().max_ns, 0);
        assert_eq!(h.quantile(0.5), 0);
    }

    #[test]
    fn values_beyond_an_hour_still_record() {
        let mut h = LatencyHistogram::new();
        h.record(7_200_000_000_000);
        assert_eq!(h.summary().max_ns, 7_200_000_000_000);
    }
}
