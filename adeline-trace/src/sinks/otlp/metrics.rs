//! The OTLP metrics: the families of `/metrics` (docs/prometheus.md) as
//! OpenTelemetry instruments. Names follow OpenTelemetry's style
//! (`adeline.stage.duration`, unit `s`); a Collector's Prometheus exporter
//! turns them back into the names of `/metrics`
//! (`adeline_stage_duration_seconds`).
//!
//! Durations are recorded per call into histograms with the `--prom-buckets`
//! bounds (exact counts and sums; a bucket holds exactly the calls at or
//! below its bound). Counters (calls, self time, frames, events, drops,
//! mapped bytes) are the agent's own whole-run totals, added as deltas at
//! every update; gauges (FPS, gauge probes, process and stage memory, CPU)
//! are set at every update.
use std::collections::HashMap;

use opentelemetry::{
    metrics::{Counter, Gauge, Histogram, Meter},
    KeyValue,
};

use crate::{container::ProcessInfo, metrics::snapshot::Window, sinks::source::SnapshotSource};

/// The instruments and the totals already added to the counters.
pub struct Instruments {
    duration: Histogram<f64>,
    frame_duration: Histogram<f64>,
    calls: Counter<u64>,
    self_time: Counter<f64>,
    frames: Counter<u64>,
    events: Counter<u64>,
    drops: Counter<u64>,
    fps: Gauge<f64>,
    probe: Gauge<i64>,
    rss: Gauge<u64>,
    rss_growth: Gauge<f64>,
    cpu: Gauge<f64>,
    stage_resident: Gauge<i64>,
    stage_mapped: Counter<u64>,
    /// `stage=NAME` attribute sets, made once per stage.
    stages: HashMap<String, [KeyValue; 1]>,
    added: Added,
}

/// Whole-run totals already added to each counter.
#[derive(Default)]
struct Added {
    calls: HashMap<String, u64>,
    self_ns: HashMap<String, u64>,
    mapped: HashMap<String, u64>,
    frames: u64,
    events: u64,
    drops: u64,
}

/// `total - *added`, and `*added = total` (a total never shrinks; if it
/// did, nothing is added).
fn delta(added: &mut u64, total: u64) -> u64 {
    let d = total.saturating_sub(*added);
    *added = (*added).max(total);
    d
}

impl Instruments {
    /// `bounds_s`: the histograms' bucket bounds, seconds, increasing.
    pub fn new(meter: &Meter, bounds_s: Vec<f64>) -> Instruments {
        Instruments {
            duration: meter
                .f64_histogram("adeline.stage.duration")
                .with_unit("s")
                .with_description("Duration of each stage call, entry to return.")
                .with_boundaries(bounds_s.clone())
                .build(),
            frame_duration: meter
                .f64_histogram("adeline.frame.duration")
                .with_unit("s")
                .with_description("End-to-end frame latency.")
                .with_boundaries(bounds_s)
                .build(),
            calls: meter
                .u64_counter("adeline.stage.calls")
                .with_description("Completed calls of each traced stage.")
                .build(),
            self_time: meter
                .f64_counter("adeline.stage.self_time")
                .with_unit("s")
                .with_description(
                    "Self time of each stage: call durations minus the traced calls made inside them.",
                )
                .build(),
            frames: meter
                .u64_counter("adeline.frames")
                .with_description("Completed frames (outermost calls of the frame stage).")
                .build(),
            events: meter
                .u64_counter("adeline.events")
                .with_description("Records the agent has read from the kernel.")
                .build(),
            drops: meter
                .u64_counter("adeline.drops")
                .with_description(
                    "Records lost in the kernel because the ring buffer was full.",
                )
                .build(),
            fps: meter
                .f64_gauge("adeline.fps")
                .with_unit("{frame}/s")
                .with_description("Frames completed per second over the last second.")
                .build(),
            probe: meter
                .i64_gauge("adeline.probe.value")
                .with_description("Last value recorded by each --gauge probe.")
                .build(),
            rss: meter
                .u64_gauge("adeline.process.memory.resident")
                .with_unit("By")
                .with_description("Resident memory of each traced process.")
                .build(),
            rss_growth: meter
                .f64_gauge("adeline.process.memory.resident.growth")
                .with_unit("By/s")
                .with_description(
                    "Growth of each traced process's resident memory: least-squares slope over the last 10 s.",
                )
                .build(),
            cpu: meter
                .f64_gauge("adeline.process.cpu.usage")
                .with_unit("1")
                .with_description(
                    "CPU use of each traced process over the last second, in cores.",
                )
                .build(),
            stage_resident: meter
                .i64_gauge("adeline.stage.memory.resident")
                .with_unit("By")
                .with_description(
                    "Resident bytes the stage's page faults added minus those released while it ran.",
                )
                .build(),
            stage_mapped: meter
                .u64_counter("adeline.stage.memory.mapped")
                .with_unit("By")
                .with_description("Bytes mapped while the stage ran.")
                .build(),
            stages: HashMap::new(),
            added: Added::default(),
        }
    }

    fn stage(&mut self, stage: &str) -> &[KeyValue; 1] {
        if !self.stages.contains_key(stage) {
            self.stages.insert(
                stage.to_string(),
                [KeyValue::new("stage", stage.to_string())],
            );
        }
        &self.stages[stage]
    }

    /// One call of `stage`.
    pub fn call(&mut self, stage: &str, dur_ns: u64, frame_root: bool) {
        let secs = dur_ns as f64 / 1e9;
        let attrs = self.stage(stage).clone();
        self.duration.record(secs, &attrs);
        if frame_root {
            self.frame_duration.record(secs, &[]);
        }
    }

    /// Counters and gauges from the running agent's totals and snapshots.
    pub fn update(&mut self, source: &dyn SnapshotSource) {
        if let Some(c) = source.cumulative() {
            for s in &c.stages {
                let attrs = self.stage(&s.stage).clone();
                let added = self.added.calls.entry(s.stage.clone()).or_default();
                self.calls.add(delta(added, s.durations.count), &attrs);
                let added = self.added.self_ns.entry(s.stage.clone()).or_default();
                let self_ns = delta(added, s.self_ns);
                self.self_time.add(self_ns as f64 / 1e9, &attrs);
            }
            if let Some(f) = &c.frames {
                self.frames.add(delta(&mut self.added.frames, f.count), &[]);
            }
        }
        let last = source.snapshot(Window::S1);
        let all = source.snapshot(Window::All);
        if let Some(f) = &last.frames {
            self.fps.record(f.fps, &[]);
        }
        for g in &all.gauges {
            if let Some(v) = g.last {
                self.probe
                    .record(v, &[KeyValue::new("gauge", g.gauge.clone())]);
            }
        }
        self.events
            .add(delta(&mut self.added.events, all.events), &[]);
        self.drops.add(delta(&mut self.added.drops, all.drops), &[]);
        for m in &last.memory {
            let attrs = process_attributes(m.pid, &last.processes);
            self.rss.record(m.rss_bytes, &attrs);
            if let Some(g) = m.growth_bytes_per_s {
                self.rss_growth.record(g, &attrs);
            }
            if let Some(p) = m.cpu_percent {
                self.cpu.record(p / 100.0, &attrs);
            }
        }
        for s in &last.stage_memory {
            let attrs = [KeyValue::new("stage", s.stage.clone())];
            self.stage_resident.record(s.resident_bytes, &attrs);
            let added = self.added.mapped.entry(s.stage.clone()).or_default();
            self.stage_mapped.add(delta(added, s.mapped_bytes), &attrs);
        }
    }
}

/// `process.pid` and, when known, the process's container and pod
/// attributes.
pub fn process_attributes(pid: u32, processes: &[ProcessInfo]) -> Vec<KeyValue> {
    let mut attrs = vec![KeyValue::new("process.pid", i64::from(pid))];
    if let Some(p) = processes.iter().find(|p| p.pid == pid) {
        attrs.extend(
            p.otel_attributes()
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v)),
        );
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_of_totals() {
        let mut added = 0;
        assert_eq!(delta(&mut added, 5), 5);
        assert_eq!(delta(&mut added, 5), 0);
        assert_eq!(delta(&mut added, 9), 4);
        assert_eq!(delta(&mut added, 3), 0);
        assert_eq!(added, 9);
    }
}
