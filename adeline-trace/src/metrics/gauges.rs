//! Gauges: integers sampled by gauge probes, summarized as count, last,
//! min, max and mean (64 bytes per gauge per slot).
use super::snapshot::GaugeStats;

/// Samples of one gauge over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GaugeAgg {
    count: u64,
    sum: i128,
    min: i64,
    max: i64,
    /// (ts_ns, value) of the most recent sample.
    last: (u64, i64),
}

impl GaugeAgg {
    /// Adds a sample taken at `ts_ns` (monotonic). Of samples with the same
    /// time, the one added last is the most recent.
    pub fn record(&mut self, ts_ns: u64, value: i64) {
        if self.count == 0 {
            (self.min, self.max) = (value, value);
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        if self.count == 0 || ts_ns >= self.last.0 {
            self.last = (ts_ns, value);
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(i128::from(value));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &GaugeAgg) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last.0 >= self.last.0 {
            self.last = other.last;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// The summary under `name`; None fields when there are no samples.
    pub fn stats(&self, name: &str) -> GaugeStats {
        let some = |v| (self.count > 0).then_some(v);
        GaugeStats {
            gauge: name.to_string(),
            count: self.count,
            last: some(self.last.1),
            min: some(self.min),
            max: some(self.max),
            mean: (self.count > 0).then(|| self.sum as f64 / self.count as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_is_by_time_not_arrival() {
        let mut g = GaugeAgg::default();
        g.record(30, 7);
        g.record(10, -4); // arrives late
        g.record(20, 100);
        let s = g.stats("rss");
        assert_eq!(s.count, 3);
        assert_eq!((s.last, s.min, s.max), (Some(7), Some(-4), Some(100)));
        assert_eq!(s.mean, Some(103.0 / 3.0));
    }

    #[test]
    fn empty_has_no_values() {
        let s = GaugeAgg::default().stats("q");
        assert_eq!(
            (s.count, s.last, s.min, s.max, s.mean),
            (0, None, None, None, None)
        );
    }

    #[test]
    fn merge_keeps_the_newest_last_and_extremes_do_not_overflow() {
        let (mut a, mut b) = (GaugeAgg::default(), GaugeAgg::default());
        a.record(5, i64::MAX);
        a.record(6, i64::MAX);
        b.record(4, i64::MIN);
        let mut m = GaugeAgg::default();
        m.merge(&b);
        m.merge(&a);
        m.merge(&GaugeAgg::default());
        let s = m.stats("x");
        assert_eq!((s.count, s.last), (3, Some(i64::MAX)));
        assert_eq!((s.min, s.max), (Some(i64::MIN), Some(i64::MAX)));
        let want = (2.0 * i64::MAX as f64 + i64::MIN as f64) / 3.0;
        assert!((s.mean.unwrap() - want).abs() <= want * 1e-12);
    }
}
