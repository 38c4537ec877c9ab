//! In-kernel aggregation's control loop (`--no-spans`, `--aggregate-above`):
//! which stages the kernel counts instead of sending a record per call,
//! decided by each stage's call rate, and the periodic read of their
//! histograms into the metrics (the differences: metrics/inkernel.rs).
use std::time::{Duration, Instant};

use crate::{
    events::monotonic_ns,
    metrics::{inkernel::KernelReads, Metrics},
    probes::{aggregation::AggMaps, ProbeError},
};

/// How often call rates are compared with the threshold.
const DECIDE_EVERY: Duration = Duration::from_secs(1);

/// With a config that SIGHUP reloads, room in `STAGE_AGG` for as many
/// stages again as the start's (at least 16 more): stages a reload adds
/// beyond it keep a record per call.
const RELOAD_ROOM_MIN: usize = 16;

/// Stages `STAGE_AGG` holds for `stages` at start; `reloadable`: a reload
/// may add stages.
pub fn capacity(stages: usize, reloadable: bool) -> u32 {
    let room = match reloadable {
        true => stages + stages.max(RELOAD_ROOM_MIN),
        false => stages,
    };
    room.min(adeline_trace_common::MAX_STAGES as usize) as u32
}

/// Per stage: aggregated or not, and the calls seen since the last decision.
pub struct Aggregating {
    /// Calls per second above which a stage is aggregated (0: all are);
    /// one aggregated falls back to records below half of it.
    above: u64,
    /// The frame root keeps its records (frames are measured from them).
    frame_stage: Option<u32>,
    /// Stage ids below this have a histogram in `STAGE_AGG`.
    capacity: usize,
    on: Vec<bool>,
    /// Calls since the last decision: span records and kernel counts.
    calls: Vec<u64>,
    /// Calls counted in the kernel since start.
    counted: Vec<u64>,
    reads: KernelReads,
    decided: Instant,
}

impl Aggregating {
    /// For `stages` stages, `STAGE_AGG` holding `capacity` (see
    /// [`capacity`]); with `above` 0 every stage but the frame root is
    /// aggregated at once, and so is every stage a reload will add within
    /// the capacity (set before its probes are attached).
    pub fn new(
        maps: &mut AggMaps,
        stages: usize,
        capacity: u32,
        above: u64,
        frame_stage: Option<u32>,
    ) -> Result<Aggregating, ProbeError> {
        let mut a = Aggregating {
            above,
            frame_stage,
            capacity: capacity as usize,
            on: Vec::new(),
            calls: Vec::new(),
            counted: Vec::new(),
            reads: KernelReads::new(0),
            decided: Instant::now(),
        };
        if above == 0 {
            for i in (0..a.capacity).filter(|&i| frame_stage != Some(i as u32)) {
                maps.set(i as u32, true)?;
            }
        }
        a.grow(stages);
        Ok(a)
    }

    /// Stages added by a reload, up to `stages` in all (ids in order). They
    /// follow the start's rule: with `--aggregate-above 0` aggregated from
    /// their first call, else by their call rate. Returns the ids beyond
    /// the capacity: they keep a record per call.
    pub fn grow(&mut self, stages: usize) -> std::ops::Range<usize> {
        let from = self.on.len();
        for i in from..stages {
            let on = self.above == 0 && i < self.capacity && self.frame_stage != Some(i as u32);
            self.on.push(on);
            self.calls.push(0);
            self.counted.push(0);
        }
        self.reads.grow(stages);
        from.max(self.capacity)..stages.max(self.capacity)
    }

    fn switch(&mut self, maps: &mut AggMaps, i: usize, on: bool) -> Result<(), ProbeError> {
        if self.frame_stage == Some(i as u32) || self.on[i] == on || i >= self.capacity {
            return Ok(());
        }
        maps.set(i as u32, on)?;
        self.on[i] = on;
        Ok(())
    }

    /// Notes a span record of `stage`.
    pub fn saw_span(&mut self, stage: u32) {
        if let Some(c) = self.calls.get_mut(stage as usize) {
            *c += 1;
        }
    }

    /// Reads the histograms of the stages aggregated now or before into
    /// `metrics`, then (every [`DECIDE_EVERY`]) switches stages by rate.
    pub fn tick(&mut self, maps: &mut AggMaps, metrics: &mut Metrics) -> Result<(), ProbeError> {
        let now_ns = monotonic_ns();
        for i in 0..self.on.len() {
            if !self.on[i] && !self.reads.known(i) {
                continue;
            }
            let d = self.reads.delta(i, maps.read(i as u32)?);
            self.calls[i] += d.count;
            self.counted[i] += d.count;
            metrics.record_kernel(i, now_ns, &d);
        }
        let elapsed = self.decided.elapsed();
        if self.above == 0 || elapsed < DECIDE_EVERY {
            return Ok(());
        }
        self.decided = Instant::now();
        for i in 0..self.on.len() {
            let rate = self.calls[i] as f64 / elapsed.as_secs_f64();
            self.calls[i] = 0;
            let above = self.above as f64;
            if !self.on[i] && rate > above {
                self.switch(maps, i, true)?;
            } else if self.on[i] && rate < above / 2.0 {
                self.switch(maps, i, false)?;
            }
        }
        Ok(())
    }

    /// Stage ids below this can be aggregated.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Calls of stage `i` counted in the kernel since start (0 for a
    /// stage never aggregated): the others came as records.
    pub fn counted(&self, i: usize) -> u64 {
        self.counted.get(i).copied().unwrap_or(0)
    }
}
