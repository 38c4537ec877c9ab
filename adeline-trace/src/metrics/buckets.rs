//! Whole-run durations as cumulative buckets (`le` counts, the shape of a
//! Prometheus histogram), read from each stage's HDR bins when asked:
//! nothing is counted per call beyond what [`Metrics`] already keeps.
//!
//! # Precision
//!
//! `count` and `sum_ns` are exact. A bucket counts the calls whose HDR bin
//! lies entirely at or below its bound, so a bucket never holds a call longer
//! than its bound. Bins are 1 ns wide below 2048 ns and at most 1/1024 of
//! the value above (3 significant digits): a call less than 0.1% below a
//! bound that shares a bin with the bound counts only from the next bucket.
use super::{latency::LatencyHistogram, sparse_hdr::SparseHdr, Metrics};

/// A distribution as cumulative buckets over increasing bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    /// `(bound_ns, calls at or below it)`, bounds increasing as given.
    pub le: Vec<(u64, u64)>,
    /// Every call (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the durations, saturated to `u64`.
    pub sum_ns: u64,
}

/// One stage over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageBuckets {
    pub stage: String,
    /// Durations, entry to return.
    pub durations: Buckets,
    /// Sum of self times (durations minus the traced calls inside).
    pub self_ns: u64,
}

/// Every stage (plan order) and the frames, over the whole run, taken at
/// one instant so counts, sums and buckets agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cumulative {
    pub stages: Vec<StageBuckets>,
    /// Frame durations, when the plan has a frame stage.
    pub frames: Option<Buckets>,
}

impl Metrics {
    /// The whole-run distributions as buckets over `bounds_ns` (increasing).
    pub fn cumulative_buckets(&self, bounds_ns: &[u64]) -> Cumulative {
        let stages = self
            .names
            .iter()
            .zip(&self.total.stages)
            .map(|(name, s)| StageBuckets {
                stage: name.clone(),
                durations: buckets(&s.hist, bounds_ns),
                self_ns: s.self_ns,
            })
            .collect();
        Cumulative {
            stages,
            frames: self
                .frame_root
                .map(|_| buckets(&self.total.frames, bounds_ns)),
        }
    }
}

/// `hist` as buckets over `bounds_ns` (see the module doc for precision).
pub fn buckets(hist: &LatencyHistogram, bounds_ns: &[u64]) -> Buckets {
    debug_assert!(bounds_ns.windows(2).all(|w| w[0] < w[1]), "{bounds_ns:?}");
    let count = hist.count();
    let le = at_or_below(hist.bins(), bounds_ns)
        .into_iter()
        .zip(bounds_ns)
        // The HDR count equals `count`; the clamp keeps `+Inf` the largest.
        .map(|(n, &b)| (b, n.min(count)))
        .collect();
    Buckets {
        le,
        count,
        sum_ns: hist.sum(),
    }
}

/// For each bound, the values in bins whose highest value is <= the bound;
/// one walk over the recorded bins (both in increasing order).
fn at_or_below(bins: &SparseHdr, bounds_ns: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(bounds_ns.len());
    let mut below = 0u64;
    for (highest, n) in bins.recorded() {
        while out.len() < bounds_ns.len() && bounds_ns[out.len()] < highest {
            out.push(below);
        }
        below = below.saturating_add(n);
    }
    out.resize(bounds_ns.len(), below);
    out
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::metrics::test_span as span;

    fn hist(values: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        values.iter().for_each(|&v| h.record(v));
        h
    }

    #[test]
    fn exact_counts_where_bins_are_one_nanosecond() {
        let b = buckets(
            &hist(&[100, 500, 501, 1000, 1000, 2000]),
            &[499, 500, 1000, 1500],
        );
        assert_eq!(b.le, [(499, 1), (500, 2), (1000, 5), (1500, 5)]);
        assert_eq!((b.count, b.sum_ns), (6, 5101));
    }

    #[test]
    fn empty_bounds_beyond_and_below_every_value() {
        let b = buckets(&hist(&[]), &[10, 20]);
        assert_eq!((b.le, b.count, b.sum_ns), (vec![(10, 0), (20, 0)], 0, 0));
        let b = buckets(&hist(&[5_000, 7_000]), &[1, 1_000_000_000_000]);
        assert_eq!(b.le, [(1, 0), (1_000_000_000_000, 2)]);
        assert!(buckets(&hist(&[3]), &[]).le.is_empty());
        // A duration of 0 is counted (as 1 ns) at or below any bound >= 1.
        assert_eq!(buckets(&hist(&[0]), &[1]).le, [(1, 1)]);
    }

    #[test]
    fn a_bucket_never_holds_a_call_longer_than_its_bound() {
        // Around 1 ms a bin is 512 ns wide: 1_000_100 shares the bound's bin
        // and 999_000 lies in an earlier one.
        let h = hist(&[999_000, 1_000_100, 1_000_600]);
        let b = buckets(&h, &[1_000_000, 1_001_000]);
        assert_eq!(b.le, [(1_000_000, 1), (1_001_000, 3)]);
        let mut one = SparseHdr::default();
        one.record_n(1_000_000, 1);
        assert_eq!(one.recorded().next(), Some((1_000_447, 1)));
    }

    #[test]
    fn stages_self_times_and_frames_of_the_whole_run() {
        let names = ["frame", "infer"].map(String::from).to_vec();
        let mut m = Metrics::new(names, vec![], Some(0));
        m.record_span(&span(0, 1_500, 500, 100, 100));
        m.record_span(&span(1, 1_000, 1_000, 200, 100));
        m.record_span(&span(0, 3_000, 3_000, 5_000, 5_000));
        m.record_span(&span(1, 400, 300, 9_000, 0));
        let c = m.cumulative_buckets(&[1_000, 2_000]);
        assert_eq!(c.stages.len(), 2);
        let (f, i) = (&c.stages[0], &c.stages[1]);
        assert_eq!((f.stage.as_str(), f.self_ns), ("frame", 3_500));
        assert_eq!(f.durations.le, [(1_000, 0), (2_000, 1)]);
        assert_eq!((i.stage.as_str(), i.self_ns), ("infer", 1_300));
        assert_eq!(i.durations.le, [(1_000, 2), (2_000, 2)]);
        assert_eq!((i.durations.count, i.durations.sum_ns), (2, 1_400));
        let frames = c.frames.unwrap();
        assert_eq!((frames.count, frames.sum_ns), (2, 4_500));
        assert_eq!(frames.le, [(1_000, 0), (2_000, 1)]);
        let m = Metrics::new(vec!["x".into()], vec![], None);
        assert_eq!(m.cumulative_buckets(&[1]).frames, None);
    }
}
