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

/// Per stage: aggregated or not, and the calls seen since the last decision.
pub struct Aggregating {
    /// Calls per second above which a stage is aggregated (0: all are);
    /// one aggregated falls back to records below half of it.
    above: u64,
    /// The frame root keeps its records (frames are measured from them).
    frame_stage: Option<u32>,
    on: Vec<bool>,
    /// Calls since the last decision: span records and kernel counts.
    calls: Vec<u64>,
    reads: KernelReads,
    decided: Instant,
}

impl Aggregating {
    /// For `stages` stages; with `above` 0 every stage but the frame root
    /// is aggregated at once.
    pub fn new(
        maps: &mut AggMaps,
        stages: usize,
        above: u64,
        frame_stage: Option<u32>,
    ) -> Result<Aggregating, ProbeError> {
        let mut a = Aggregating {
            above,
            frame_stage,
            on: vec![false; stages],
            calls: vec![0; stages],
            reads: KernelReads::new(stages),
            decided: Instant::now(),
        };
        if above == 0 {
            for i in 0..stages {
                a.switch(maps, i, true)?;
            }
        }
        Ok(a)
    }

    fn switch(&mut self, maps: &mut AggMaps, i: usize, on: bool) -> Result<(), ProbeError> {
        if self.frame_stage == Some(i as u32) || self.on[i] == on {
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

    /// Stages aggregated now.
    pub fn aggregated(&self) -> usize {
        self.on.iter().filter(|&&o| o).count()
    }
}
