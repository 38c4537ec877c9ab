//! Aggregation of events into per-stage latency distributions.
pub mod latency;
pub mod snapshot;

use adeline_trace_common::SpanRecord;

pub use latency::{LatencyHistogram, LatencySummary};

/// Per-stage distributions, over the whole run and over the current interval.
#[derive(Debug)]
pub struct Metrics {
    names: Vec<String>,
    total: Vec<LatencyHistogram>,
    interval: Vec<LatencyHistogram>,
    /// Spans whose stage id is not in the plan (never expected).
    pub unknown_stage: u64,
}

impl Metrics {
    pub fn new(names: Vec<String>) -> Metrics {
        let n = names.len();
        Metrics {
            names,
            total: vec![LatencyHistogram::new(); n],
            interval: vec![LatencyHistogram::new(); n],
            unknown_stage: 0,
        }
    }

    pub fn stage_name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    pub fn record_span(&mut self, span: &SpanRecord) {
        let i = span.stage as usize;
        match (self.total.get_mut(i), self.interval.get_mut(i)) {
            (Some(t), Some(w)) => {
                t.record(span.dur_ns);
                w.record(span.dur_ns);
            }
            _ => self.unknown_stage += 1,
        }
    }

    /// (stage, summary) over the whole run, in plan order.
    pub fn totals(&self) -> Vec<(&str, LatencySummary)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.total.iter().map(LatencyHistogram::summary))
            .collect()
    }

    /// (stage, summary) over the interval since the last call, then resets it.
    pub fn take_interval(&mut self) -> Vec<(String, LatencySummary)> {
        let out = self
            .names
            .iter()
            .cloned()
            .zip(self.interval.iter().map(LatencyHistogram::summary))
            .collect();
        self.interval.iter_mut().for_each(LatencyHistogram::reset);
        out
    }
}
