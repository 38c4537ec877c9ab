//! What is accumulated over one period (a window slot, or the whole run):
//! per stage a duration distribution and self-time sums, the frames, the
//! gauges. Generic over the distribution: [`LogHist`] in window slots,
//! [`LatencyHistogram`] (HDR, 3 significant digits) for the whole run.
use adeline_trace_common::SpanRecord;

use super::{
    frames,
    gauges::GaugeAgg,
    inkernel::KernelDelta,
    latency::LatencyHistogram,
    loghist::LogHist,
    snapshot::{FrameStats, GaugeStats, Percentiles, StageStats},
    window::SlotData,
};

/// A distribution of durations.
pub trait Dist: Clone {
    fn record(&mut self, v: u64);
    /// Adds the calls counted in the kernel (bins' middles, exact sum).
    fn record_bins(&mut self, d: &KernelDelta);
    fn count(&self) -> u64;
    /// Sum of the values, saturated to `u64`.
    fn sum(&self) -> u64;
    fn percentiles(&self) -> Percentiles;
    /// Bytes held on the heap.
    fn heap_bytes(&self) -> usize;
}

impl Dist for LogHist {
    fn record(&mut self, v: u64) {
        LogHist::record(self, v)
    }
    fn record_bins(&mut self, d: &KernelDelta) {
        for &(v, n) in &d.bins {
            self.record_n(v, n);
        }
        self.add_sum(d.sum_ns);
    }
    fn count(&self) -> u64 {
        LogHist::count(self)
    }
    fn sum(&self) -> u64 {
        LogHist::sum(self)
    }
    fn percentiles(&self) -> Percentiles {
        LogHist::percentiles(self)
    }
    fn heap_bytes(&self) -> usize {
        LogHist::heap_bytes(self)
    }
}

impl Dist for LatencyHistogram {
    fn record(&mut self, v: u64) {
        LatencyHistogram::record(self, v)
    }
    fn record_bins(&mut self, d: &KernelDelta) {
        for &(v, n) in &d.bins {
            self.record_n(v, n);
        }
        self.add_sum(d.sum_ns);
    }
    fn count(&self) -> u64 {
        LatencyHistogram::count(self)
    }
    fn sum(&self) -> u64 {
        LatencyHistogram::sum(self)
    }
    fn percentiles(&self) -> Percentiles {
        LatencyHistogram::percentiles(self)
    }
    fn heap_bytes(&self) -> usize {
        LatencyHistogram::heap_bytes(self)
    }
}

/// One stage over a period.
#[derive(Debug, Clone)]
pub struct StageAgg<H> {
    /// Durations.
    pub hist: H,
    /// Sum of self times.
    pub self_ns: u64,
    /// Sum of self times of the calls inside frames.
    pub frame_self_ns: u64,
}

/// Every stage, the frames and every gauge over a period.
#[derive(Debug, Clone)]
pub struct Agg<H> {
    pub stages: Vec<StageAgg<H>>,
    /// Durations of the frames (outermost frame-root calls).
    pub frames: H,
    pub gauges: Vec<GaugeAgg>,
}

/// The parts of a snapshot that come from one period.
pub struct Report {
    pub stages: Vec<StageStats>,
    pub frames: Option<FrameStats>,
    pub gauges: Vec<GaugeStats>,
}

impl<H: Dist> Agg<H> {
    /// Empty, for `stages` stages and `gauges` gauges; `empty` is an empty
    /// distribution.
    /// One more stage, empty (a stage added by a config reload).
    pub fn add_stage(&mut self, empty: H) {
        self.stages.push(StageAgg {
            hist: empty,
            self_ns: 0,
            frame_self_ns: 0,
        });
    }

    pub fn new(stages: usize, gauges: usize, empty: H) -> Agg<H> {
        let stage = StageAgg {
            hist: empty.clone(),
            self_ns: 0,
            frame_self_ns: 0,
        };
        Agg {
            stages: vec![stage; stages],
            frames: empty,
            gauges: vec![GaugeAgg::default(); gauges],
        }
    }

    /// Adds a span of stage `i` (in range); `frame` if it is a frame.
    #[inline]
    pub fn record_span(&mut self, i: usize, span: &SpanRecord, frame: bool) {
        let s = &mut self.stages[i];
        s.hist.record(span.dur_ns);
        s.self_ns = s.self_ns.saturating_add(span.self_ns);
        if frames::in_frame(span) {
            s.frame_self_ns = s.frame_self_ns.saturating_add(span.self_ns);
        }
        if frame {
            self.frames.record(span.dur_ns);
        }
    }

    /// Adds the calls of stage `i` (in range) counted in the kernel.
    pub fn record_kernel(&mut self, i: usize, d: &KernelDelta) {
        let s = &mut self.stages[i];
        s.hist.record_bins(d);
        s.self_ns = s.self_ns.saturating_add(d.self_ns);
        s.frame_self_ns = s.frame_self_ns.saturating_add(d.frame_self_ns);
    }

    /// Adds a sample of gauge `i` (in range).
    pub fn record_gauge(&mut self, i: usize, ts_ns: u64, value: i64) {
        self.gauges[i].record(ts_ns, value);
    }

    /// Bytes held, inline and on the heap.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.stages.capacity() * std::mem::size_of::<StageAgg<H>>()
            + self
                .stages
                .iter()
                .map(|s| s.hist.heap_bytes())
                .sum::<usize>()
            + self.frames.heap_bytes()
            + self.gauges.capacity() * std::mem::size_of::<GaugeAgg>()
    }

    /// Stage, frame and gauge statistics over a period that covered
    /// `covered_ns`. `frame_root` is the root stage's index, when declared.
    pub fn report(
        &self,
        names: &[String],
        gauge_names: &[String],
        frame_root: Option<usize>,
        covered_ns: u64,
    ) -> Report {
        let frames_ns = match frame_root {
            Some(_) => self.frames.sum(),
            None => 0,
        };
        let frame_self: Vec<u64> = self.stages.iter().map(|s| s.frame_self_ns).collect();
        let stages = names
            .iter()
            .zip(&self.stages)
            .zip(frames::shares(&frame_self, frames_ns))
            .map(|((name, s), frame_share)| {
                let latency = s.hist.percentiles();
                StageStats {
                    stage: name.clone(),
                    rate_hz: frames::per_second(latency.count, covered_ns),
                    latency,
                    total_ns: s.hist.sum(),
                    self_ns: s.self_ns,
                    frame_share,
                }
            })
            .collect();
        let frames = frame_root
            .and_then(|i| names.get(i))
            .map(|root| frames::frame_stats(root, self.frames.percentiles(), covered_ns));
        let gauges = gauge_names
            .iter()
            .zip(&self.gauges)
            .map(|(name, g)| g.stats(name))
            .collect();
        Report {
            stages,
            frames,
            gauges,
        }
    }
}

impl Agg<LogHist> {
    /// Adds everything in `other` (same stages and gauges).
    pub fn merge(&mut self, other: &Agg<LogHist>) {
        for (s, o) in self.stages.iter_mut().zip(&other.stages) {
            s.hist.merge(&o.hist);
            s.self_ns = s.self_ns.saturating_add(o.self_ns);
            s.frame_self_ns = s.frame_self_ns.saturating_add(o.frame_self_ns);
        }
        self.frames.merge(&other.frames);
        for (g, o) in self.gauges.iter_mut().zip(&other.gauges) {
            g.merge(o);
        }
    }
}

impl SlotData for Agg<LogHist> {
    fn clear(&mut self) {
        for s in &mut self.stages {
            s.hist.clear();
            s.self_ns = 0;
            s.frame_self_ns = 0;
        }
        self.frames.clear();
        self.gauges.fill(GaugeAgg::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metrics::test_span as span;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sums_shares_and_merge() {
        let mut a = Agg::new(2, 1, LogHist::new());
        let root = span(0, 10_000, 6_000, 100, 100);
        a.record_span(0, &root, true);
        a.record_span(1, &span(1, 4_000, 4_000, 200, 100), false);
        a.record_span(1, &span(1, 1_000, 1_000, 50_000, 0), false); // outside frames
        a.record_gauge(0, 7, 42);
        let mut m = Agg::new(2, 1, LogHist::new());
        m.merge(&a);
        m.merge(&a);
        let r = m.report(
            &names(&["frame", "infer"]),
            &names(&["rss"]),
            Some(0),
            2_000_000_000,
        );
        let (f, i) = (&r.stages[0], &r.stages[1]);
        assert_eq!(
            (f.latency.count, f.total_ns, f.self_ns),
            (2, 20_000, 12_000)
        );
        assert_eq!(
            (i.latency.count, i.total_ns, i.self_ns),
            (4, 10_000, 10_000)
        );
        assert_eq!((f.rate_hz, i.rate_hz), (1.0, 2.0));
        assert_eq!((f.frame_share, i.frame_share), (Some(0.6), Some(0.4)));
        let frames = r.frames.unwrap();
        assert_eq!((frames.fps, frames.latency.p50_ns), (1.0, 10_000));
        assert_eq!((r.gauges[0].count, r.gauges[0].last), (2, Some(42)));
        a.clear();
        let r = a.report(&names(&["frame", "infer"]), &names(&["rss"]), Some(0), 0);
        assert_eq!(r.stages[0].latency, Percentiles::default());
        assert_eq!((r.stages[0].frame_share, r.gauges[0].count), (None, 0));
    }

    #[test]
    fn no_frame_root_no_frames() {
        let mut a = Agg::new(1, 0, LatencyHistogram::new());
        a.record_span(0, &span(0, 10, 10, 5, 5), false);
        let r = a.report(&names(&["x"]), &[], None, 1_000);
        assert_eq!((r.frames, r.stages[0].frame_share), (None, None));
        assert!(a.bytes() > 0);
    }
}
