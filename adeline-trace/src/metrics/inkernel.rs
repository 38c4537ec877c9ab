//! Calls counted in the kernel (in-kernel aggregation, `--no-spans`): the
//! kernel's per-stage histograms only grow, so each read is turned into the
//! difference since the previous one, which the metrics add like spans.
//!
//! The kernel bins as [`super::loghist::LogHist`] does, and each call is
//! added at its bin's middle: percentiles are within 1/128 (0.78%) of the
//! exact values in the windows and over the whole run (whose own HDR
//! histogram adds at most 0.1%); count, sum (so mean and rate) and self
//! times stay exact. Min and max are the middles of their bins. Calls
//! count in the windows at the time of the read that found them (every
//! [`READ_EVERY_MS`] ms), not at their own completion.
use adeline_trace_common::{StageHist, AGG_BINS};

use super::loghist::bin_mid;

/// How often the agent reads the kernel's histograms, ms.
pub const READ_EVERY_MS: u64 = 100;

/// What the kernel counted for one stage between two reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelDelta {
    pub count: u64,
    pub sum_ns: u64,
    pub self_ns: u64,
    pub frame_self_ns: u64,
    /// (bin middle, calls) of the non-empty bins, increasing.
    pub bins: Vec<(u64, u64)>,
}

/// The previous read of each stage's histogram (kept only for stages that
/// were ever aggregated: 9.3 KiB each).
#[derive(Debug, Default)]
pub struct KernelReads {
    prev: Vec<Option<Box<StageHist>>>,
}

impl KernelReads {
    pub fn new(stages: usize) -> KernelReads {
        KernelReads {
            prev: (0..stages).map(|_| None).collect(),
        }
    }

    /// Room for `stages` stages (stages added by a reload).
    pub fn grow(&mut self, stages: usize) {
        if stages > self.prev.len() {
            self.prev.resize_with(stages, || None);
        }
    }

    /// The calls counted since the previous read of stage `i` (`now` is
    /// the CPUs' sum, bins modulo 2^32: a bin cannot gain 2^32 calls
    /// between two reads).
    pub fn delta(&mut self, i: usize, now: Box<StageHist>) -> KernelDelta {
        let zero = StageHist::default();
        let prev = self.prev[i].as_deref().unwrap_or(&zero);
        let bins = (0..AGG_BINS)
            .filter_map(|b| {
                let n = now.bins[b].wrapping_sub(prev.bins[b]);
                (n != 0).then(|| (bin_mid(b), u64::from(n)))
            })
            .collect();
        let d = KernelDelta {
            count: now.count.wrapping_sub(prev.count),
            sum_ns: now.sum_ns.wrapping_sub(prev.sum_ns),
            self_ns: now.self_ns.wrapping_sub(prev.self_ns),
            frame_self_ns: now.frame_self_ns.wrapping_sub(prev.frame_self_ns),
            bins,
        };
        self.prev[i] = Some(now);
        d
    }

    /// Whether stage `i` was ever read (aggregated at some point).
    pub fn known(&self, i: usize) -> bool {
        self.prev[i].is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adeline_trace_common::agg_bin;

    fn hist(values: &[u64]) -> Box<StageHist> {
        let mut h = Box::<StageHist>::default();
        for &v in values {
            h.count += 1;
            h.sum_ns += v;
            h.bins[agg_bin(v)] = h.bins[agg_bin(v)].wrapping_add(1);
        }
        h
    }

    #[test]
    fn deltas_are_the_calls_since_the_last_read() {
        let mut r = KernelReads::new(2);
        let d = r.delta(1, hist(&[10, 1000, 1000]));
        assert_eq!((d.count, d.sum_ns), (3, 2010));
        assert_eq!(d.bins, vec![(10, 1), (bin_mid(agg_bin(1000)), 2)]);
        let d = r.delta(1, hist(&[10, 1000, 1000, 5_000_000]));
        assert_eq!((d.count, d.sum_ns), (1, 5_000_000));
        assert_eq!(d.bins.len(), 1);
        assert!(r.known(1) && !r.known(0));
    }

    #[test]
    fn wrapped_bins_still_give_the_difference() {
        let mut r = KernelReads::new(1);
        let mut a = hist(&[]);
        a.bins[100] = u32::MAX - 1;
        r.delta(0, a);
        let mut b = hist(&[]);
        b.bins[100] = 3;
        assert_eq!(r.delta(0, b).bins, vec![(bin_mid(100), 5)]);
    }

    #[test]
    fn bin_middles_are_within_the_stated_error() {
        for v in [
            1u64,
            63,
            64,
            65,
            127,
            128,
            1000,
            123_456,
            987_654_321,
            (1 << 42) - 1,
        ] {
            let m = bin_mid(agg_bin(v));
            let err = (m as f64 - v as f64).abs() / v as f64;
            assert!(err <= 1.0 / 128.0, "{v}: middle {m}, error {err}");
        }
    }
}
