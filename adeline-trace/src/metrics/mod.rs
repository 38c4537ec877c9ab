//! Aggregation of span and gauge records into per-stage latency
//! distributions, frames and gauges, over the whole run and over sliding
//! windows of 1 s, 10 s and 60 s ([`Metrics::snapshot`]).
//!
//! # Memory
//!
//! Fixed by the number of stages and gauges and by how their durations
//! spread, whatever the run length: no record is kept, only distributions.
//! Per stage, and once more for the frames:
//! - the whole-run histogram ([`LatencyHistogram`], HDR bins stored
//!   sparsely): 512 bytes per block of 64 bins ever used: 8-16 KiB for
//!   durations that vary 2x, ~40 KiB for 16x, +512 bytes per outlier block;
//! - 61 [`loghist::LogHist`]s (3 rings of 20 window slots, and the interval
//!   of [`Metrics::take_interval`]): 80 bytes + 256 bytes per octave of
//!   durations the slot saw in its current or previous period (octaves a
//!   period left empty are freed when the slot is reused): 1.3 KiB for
//!   durations that vary 16x;
//! - per gauge, 61 x 64 bytes.
//!
//! So 32 stages (33 with the frames) whose durations vary up to 16x take
//! about 33 x (40 + 61 x 1.3) KiB = 3.9 MiB. The ceiling, reached only if
//! every slot sees durations in every octave and the run sees every HDR
//! bin of `u64`, is 33 x (459 + 60 x 9.3 + 15.2) KiB = 33 MiB.
pub mod aggregate;
pub mod bottleneck;
pub mod buckets;
pub mod frames;
pub mod gauges;
pub mod inkernel;
pub mod latency;
pub mod loghist;
pub mod memory;
pub mod profile;
pub mod snapshot;
pub mod sparse_hdr;
pub mod window;

#[cfg(test)]
mod tests;

/// A span for unit tests: the fields aggregation reads, the rest default.
#[cfg(test)]
pub(crate) fn test_span(
    stage: u32,
    dur_ns: u64,
    self_ns: u64,
    start_ns: u64,
    frame_ns: u64,
) -> SpanRecord {
    SpanRecord {
        stage,
        start_ns,
        dur_ns,
        self_ns,
        frame_ns,
        ..Default::default()
    }
}

use adeline_trace_common::{GaugeRecord, MapRecord, SpanRecord, MAP_OP_MMAP, MAP_OP_MUNMAP};

use aggregate::{Agg, Dist as _};
use loghist::LogHist;
use snapshot::{Bottleneck, Percentiles, Snapshot, StageMemory, Window, SNAPSHOT_VERSION};
use window::Ring;

pub use latency::LatencyHistogram;

/// Spans at least this long (~73 min) count in the whole-run figures only:
/// no stage call of a real-time pipeline lasts that long, such a duration
/// comes from a clock fault, and its completion time would pin a window
/// slot far in the future.
pub const MAX_WINDOW_DUR_NS: u64 = 1 << 42;

/// The sliding windows, in ring order.
const SLIDING: [Window; 3] = [Window::S1, Window::S10, Window::S60];

/// Per-stage distributions, frames and gauges over the whole run, the
/// current `--live` interval and sliding windows (see the module doc for
/// the memory bound).
#[derive(Debug)]
pub struct Metrics {
    names: Vec<String>,
    gauge_names: Vec<String>,
    /// Index of the frame-root stage.
    frame_root: Option<usize>,
    total: Agg<LatencyHistogram>,
    interval: Vec<LogHist>,
    /// One ring per window of [`SLIDING`].
    rings: [Ring<Agg<LogHist>>; 3],
    /// Everything recorded since the last [`Metrics::take_period`], and
    /// when that period started (monotonic ns); only when periods are
    /// tracked (the history store's rows must tile time exactly, which the
    /// sliding windows do not).
    period: Option<(Agg<LogHist>, u64)>,
    /// Per stage (and one more for "no stage"): bytes mapped, unmapped, and
    /// mapped inside frames, over the whole run.
    mapped: Vec<[u64; 3]>,
    /// Earliest record time seen (monotonic ns).
    first_ns: Option<u64>,
    /// Spans whose stage id is not in the plan (never expected).
    pub unknown_stage: u64,
    /// Gauge samples whose gauge id is not in the plan (never expected).
    pub unknown_gauge: u64,
}

impl Metrics {
    /// Aggregation for the plan's `stages` and `gauges` (names in id order);
    /// `frame_stage` is the frame root's stage id (ignored if out of range).
    pub fn new(stages: Vec<String>, gauges: Vec<String>, frame_stage: Option<u32>) -> Metrics {
        let (n, g) = (stages.len(), gauges.len());
        let slots = Agg::new(n, g, LogHist::new());
        Metrics {
            frame_root: frame_stage.map(|i| i as usize).filter(|&i| i < n),
            total: Agg::new(n, g, LatencyHistogram::new()),
            interval: vec![LogHist::new(); n],
            rings: SLIDING.map(|w| Ring::new(w.nanos().unwrap_or(1), slots.clone())),
            mapped: vec![[0; 3]; n + 1],
            period: None,
            first_ns: None,
            names: stages,
            gauge_names: gauges,
            unknown_stage: 0,
            unknown_gauge: 0,
        }
    }

    /// A stage added while tracing (a config reload), with the next id;
    /// the existing stages keep theirs and everything they counted.
    pub fn add_stage(&mut self, name: String) -> u32 {
        self.names.push(name);
        self.total.add_stage(LatencyHistogram::new());
        self.interval.push(LogHist::new());
        for ring in &mut self.rings {
            ring.for_each_mut(|agg| agg.add_stage(LogHist::new()));
        }
        if let Some((period, _)) = self.period.as_mut() {
            period.add_stage(LogHist::new());
        }
        // The last entry is "no stage".
        let none = self.mapped.len() - 1;
        self.mapped.insert(none, [0; 3]);
        (self.names.len() - 1) as u32
    }

    /// Name of stage `id`, None if not in the plan.
    pub fn stage_name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    /// Name of gauge `id`, None if not in the plan.
    pub fn gauge_name(&self, id: u32) -> Option<&str> {
        self.gauge_names.get(id as usize).map(String::as_str)
    }

    /// Adds a completed call. It counts in the windows by its completion
    /// time, `start_ns + dur_ns` (monotonic).
    pub fn record_span(&mut self, span: &SpanRecord) {
        let i = span.stage as usize;
        if i >= self.names.len() {
            self.unknown_stage += 1;
            return;
        }
        let frame = frames::is_frame(span, self.frame_root.map(|r| r as u32));
        self.total.record_span(i, span, frame);
        self.interval[i].record(span.dur_ns);
        if let Some((period, _)) = self.period.as_mut() {
            period.record_span(i, span, frame);
        }
        let end = span.start_ns.checked_add(span.dur_ns);
        if let Some(end) = end.filter(|_| span.dur_ns < MAX_WINDOW_DUR_NS) {
            self.seen(end);
            for ring in &mut self.rings {
                if let Some(slot) = ring.slot_mut(end) {
                    slot.record_span(i, span, frame);
                }
            }
        }
    }

    /// Adds the calls of stage `i` counted in the kernel, in the windows
    /// at `now_ns` (monotonic, the read's time; see [`inkernel`]).
    pub fn record_kernel(&mut self, i: usize, now_ns: u64, d: &inkernel::KernelDelta) {
        if i >= self.names.len() || d.count == 0 {
            return;
        }
        self.total.record_kernel(i, d);
        self.interval[i].record_bins(d);
        if let Some((period, _)) = self.period.as_mut() {
            period.record_kernel(i, d);
        }
        self.seen(now_ns);
        for ring in &mut self.rings {
            if let Some(slot) = ring.slot_mut(now_ns) {
                slot.record_kernel(i, d);
            }
        }
    }

    /// Adds a gauge sample, counted in the windows at its `ts_ns`.
    pub fn record_gauge(&mut self, g: &GaugeRecord) {
        let i = g.gauge as usize;
        if i >= self.gauge_names.len() {
            self.unknown_gauge += 1;
            return;
        }
        self.total.record_gauge(i, g.ts_ns, g.value);
        if let Some((period, _)) = self.period.as_mut() {
            period.record_gauge(i, g.ts_ns, g.value);
        }
        self.seen(g.ts_ns);
        for ring in &mut self.rings {
            if let Some(slot) = ring.slot_mut(g.ts_ns) {
                slot.record_gauge(i, g.ts_ns, g.value);
            }
        }
    }

    fn seen(&mut self, t_ns: u64) {
        self.first_ns = Some(self.first_ns.map_or(t_ns, |f| f.min(t_ns)));
    }

    /// (stage, latency) over the whole run, in plan order.
    pub fn totals(&self) -> Vec<(&str, Percentiles)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.total.stages.iter().map(|s| s.hist.percentiles()))
            .collect()
    }

    /// (stage, latency) over the interval since the last call, then resets
    /// it. Percentiles are within 0.78% (a [`LogHist`]); count, min, mean
    /// and max are exact.
    pub fn take_interval(&mut self) -> Vec<(String, Percentiles)> {
        let out = self
            .names
            .iter()
            .cloned()
            .zip(self.interval.iter().map(LogHist::percentiles))
            .collect();
        self.interval.iter_mut().for_each(LogHist::clear);
        out
    }

    /// Everything over `window` ending at `now_ns` (CLOCK_MONOTONIC);
    /// `wall_ns` becomes the snapshot's time, `events` and `drops` are copied
    /// in. Sliding windows follow the rule of [`window`]; `window_ns` is the
    /// time covered since the window's oldest slot or the first record,
    /// whichever is later (since the first record for [`Window::All`]).
    pub fn snapshot(
        &self,
        window: Window,
        now_ns: u64,
        wall_ns: u64,
        events: u64,
        drops: u64,
    ) -> Snapshot {
        let covered = |start: u64| match self.first_ns {
            Some(first) => now_ns.saturating_sub(start.max(first)),
            None => 0,
        };
        let (report, window_ns, p99_growth) = match SLIDING.iter().position(|&w| w == window) {
            None => {
                let window_ns = covered(0);
                let report =
                    self.total
                        .report(&self.names, &self.gauge_names, self.frame_root, window_ns);
                (report, window_ns, None)
            }
            Some(r) => {
                let ring = &self.rings[r];
                let current = ring.current(now_ns);
                let window_ns = covered(current.start_ns);
                let report = self.merge(&current.slots).report(
                    &self.names,
                    &self.gauge_names,
                    self.frame_root,
                    window_ns,
                );
                let earlier = self.merge(&ring.earlier(now_ns).slots);
                let earlier: Vec<_> = earlier
                    .stages
                    .iter()
                    .map(|s| s.hist.percentiles())
                    .collect();
                let now: Vec<_> = report.stages.iter().map(|s| s.latency).collect();
                let growth = bottleneck::p99_growth(&self.names, &now, &earlier);
                (report, window_ns, growth)
            }
        };
        self.assemble(
            window, window_ns, report, p99_growth, wall_ns, events, drops,
        )
    }

    /// Adds an mmap/munmap of a traced process to its stage's totals.
    pub fn record_map(&mut self, m: &MapRecord) {
        let none = self.mapped.len() - 1;
        let i = if (m.stage as usize) < none {
            m.stage as usize
        } else {
            none
        };
        let slot = &mut self.mapped[i];
        match m.op {
            MAP_OP_MMAP => {
                slot[0] = slot[0].saturating_add(m.bytes);
                if m.frame_ns != 0 {
                    slot[2] = slot[2].saturating_add(m.bytes);
                }
            }
            MAP_OP_MUNMAP => slot[1] = slot[1].saturating_add(m.bytes),
            _ => {}
        }
    }

    /// Stage names by id.
    pub fn stage_names(&self) -> &[String] {
        &self.names
    }

    /// Frames completed in the run (None without a frame stage).
    pub fn frames_total(&self) -> Option<u64> {
        self.frame_root.map(|_| self.total.frames.count())
    }

    /// Per-stage mapping totals (stages that mapped or unmapped anything,
    /// then "(no stage)"), with bytes per frame when there are frames.
    pub fn stage_memory(&self) -> Vec<StageMemory> {
        let frames = self.frame_root.map(|_| self.total.frames.count());
        self.mapped
            .iter()
            .enumerate()
            .filter(|(_, m)| m[0] != 0 || m[1] != 0)
            .map(|(i, m)| StageMemory {
                stage: self
                    .names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| "(no stage)".into()),
                mapped_bytes: m[0],
                unmapped_bytes: m[1],
                mapped_per_frame: frames.filter(|&f| f > 0).map(|f| m[2] as f64 / f as f64),
                resident_bytes: 0,
                growth_bytes_per_s: None,
            })
            .collect()
    }

    /// Starts tracking periods at `now_ns` (see [`Metrics::take_period`]).
    pub fn track_periods(&mut self, now_ns: u64) {
        let empty = Agg::new(self.names.len(), self.gauge_names.len(), LogHist::new());
        self.period = Some((empty, now_ns));
    }

    /// Everything recorded since the previous call (or since
    /// [`Metrics::track_periods`]), as a snapshot labelled `window` whose
    /// `window_ns` is the period's exact length; starts the next period.
    /// Consecutive periods tile time: each record is in exactly one (by
    /// when it was recorded). None unless periods are tracked.
    pub fn take_period(
        &mut self,
        window: Window,
        now_ns: u64,
        wall_ns: u64,
        events: u64,
        drops: u64,
    ) -> Option<Snapshot> {
        let (n, g) = (self.names.len(), self.gauge_names.len());
        let (agg, start_ns) = self
            .period
            .replace((Agg::new(n, g, LogHist::new()), now_ns))?;
        let window_ns = now_ns.saturating_sub(start_ns);
        let report = agg.report(&self.names, &self.gauge_names, self.frame_root, window_ns);
        Some(self.assemble(window, window_ns, report, None, wall_ns, events, drops))
    }

    /// A snapshot from one period's report (memory is the caller's to add).
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        &self,
        window: Window,
        window_ns: u64,
        report: aggregate::Report,
        p99_growth: Option<snapshot::GrowthOf>,
        wall_ns: u64,
        events: u64,
        drops: u64,
    ) -> Snapshot {
        Snapshot {
            v: SNAPSHOT_VERSION,
            ts_ns: wall_ns,
            window,
            window_ns,
            bottleneck: Bottleneck {
                top_self_share: bottleneck::top_self_share(&report.stages),
                p99_growth,
            },
            stages: report.stages,
            frames: report.frames,
            gauges: report.gauges,
            events,
            drops,
            memory: Vec::new(),
            stage_memory: self.stage_memory(),
            alloc: None,
            host: None,
            processes: Vec::new(),
        }
    }

    fn merge(&self, slots: &[&Agg<LogHist>]) -> Agg<LogHist> {
        let mut merged = Agg::new(self.names.len(), self.gauge_names.len(), LogHist::new());
        for slot in slots {
            merged.merge(slot);
        }
        merged
    }

    /// Bytes held by the aggregation (distributions, slots, gauges), inline
    /// and on the heap; names excluded.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.total.bytes()
            + self
                .interval
                .iter()
                .map(|h| std::mem::size_of::<LogHist>() + h.heap_bytes())
                .sum::<usize>()
            + self
                .rings
                .iter()
                .flat_map(Ring::all)
                .map(Agg::bytes)
                .sum::<usize>()
    }
}
