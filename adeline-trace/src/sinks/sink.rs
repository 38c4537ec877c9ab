//! The [`Sink`] trait every output implements, and the records the tracer
//! hands to it.
use std::{io, path::PathBuf, time::Instant};

use adeline_trace_common::{GaugeRecord, SpanRecord};
use serde::Serialize;
use thiserror::Error;

use super::{history::HistoryError, source::SnapshotSource};
use crate::{
    alerts::AlertEvent,
    metrics::snapshot::{
        AllocReport, AllocSite, HostStats, Percentiles, ProcessMemory, StageMemory,
    },
};

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot create {what} {}: {source}", path.display())]
    Create {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("duplicating stdout: {0}")]
    Stdout(io::Error),
    #[error("writing {what}: {source}")]
    Write {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot write {what} to {}: {source}", path.display())]
    WriteFile {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl SinkError {
    /// An error writing `what` (the events, the trace file, ...).
    pub fn write(what: &'static str) -> impl FnOnce(io::Error) -> SinkError {
        move |source| SinkError::Write { what, source }
    }
}

/// A probe as attached, for the `start` record.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeInfo {
    pub stage: String,
    pub target: String,
    pub symbol: String,
    pub offset: u64,
    /// Where the probes sit, and why.
    pub placement: PlacementInfo,
}

/// Where a function's probes sit (docs/events.md, `start`).
#[derive(Debug, Clone, Serialize)]
pub struct PlacementInfo {
    /// Bytes from the function's entry.
    pub offset: u64,
    /// File offset probed (`offset` of the function + this `offset`).
    pub address: u64,
    /// The probed instruction, Intel syntax.
    pub insn: String,
    /// The kernel emulates it (false: single-stepped, one more trap).
    pub emulated: bool,
    /// Why this instruction.
    pub reason: String,
}

/// Tracing starts: every probe is attached.
#[derive(Debug, Serialize)]
pub struct Start<'a> {
    pub ts_ns: u64,
    pub pids: &'a [u32],
    pub probes: &'a [ProbeInfo],
    /// Stages timed at their exit instructions (`--exit-probes`): one
    /// entry per exit instruction (absent when none).
    #[serde(skip_serializing_if = "<[ProbeInfo]>::is_empty")]
    pub exits: &'a [ProbeInfo],
    /// The catch and forced-unwind hooks that end calls an exception
    /// unwound (absent when none) ...
    #[serde(skip_serializing_if = "<[ProbeInfo]>::is_empty")]
    pub unwind: &'a [ProbeInfo],
    /// ... and why exceptions may still terminate a traced process.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub unwind_warnings: &'a [String],
}

/// One completed call.
#[derive(Debug)]
pub struct Span<'a> {
    pub record: &'a SpanRecord,
    pub stage: &'a str,
    /// Wall-clock entry time.
    pub ts_ns: u64,
    /// Wall-clock entry time of the frame it belongs to, if any.
    pub frame_ts_ns: Option<u64>,
    /// The call is a frame (a call of the frame-root stage, outermost).
    pub frame_root: bool,
}

/// One gauge sample.
#[derive(Debug)]
pub struct Gauge<'a> {
    pub record: &'a GaugeRecord,
    pub gauge: &'a str,
    /// Wall-clock time.
    pub ts_ns: u64,
}

/// The counters at the end of a stats interval, and the interval's latency.
#[derive(Debug, Serialize)]
pub struct Stats<'a> {
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// Records read in the interval, and lost (ring full).
    pub events: u64,
    pub drops: u64,
    pub events_total: u64,
    pub drops_total: u64,
    pub unmatched_total: u64,
    pub depth_overflow_total: u64,
    pub filtered_total: u64,
    /// Traced calls ended by an exception, and open calls dropped
    /// without a return (longjmp, an exit that was not probed).
    pub unwound_total: u64,
    pub abandoned_total: u64,
    /// Each stage's calls completed in the interval.
    #[serde(skip)]
    pub interval: &'a [(String, Percentiles)],
}

/// Memory every stats interval: the traced processes, the stages, alloc
/// mode's report (its sites go out as [`Sink::alloc_site`]) and the host.
#[derive(Debug, Serialize)]
pub struct Memory<'a> {
    pub ts_ns: u64,
    pub processes: &'a [ProcessMemory],
    pub stages: &'a [StageMemory],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a HostStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc: Option<&'a AllocReport>,
}

impl Memory<'_> {
    /// Nothing to report (no process sampled, no stage memory, no alloc mode).
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.stages.is_empty() && self.alloc.is_none()
    }
}

/// One of the largest outstanding allocation sites (alloc mode).
#[derive(Debug, Serialize)]
pub struct RankedSite<'a> {
    pub ts_ns: u64,
    /// 1 = the largest.
    pub rank: usize,
    #[serde(flatten)]
    pub site: &'a AllocSite,
}

/// One stage over the whole run.
#[derive(Debug, Serialize)]
pub struct StageTotal<'a> {
    pub stage: &'a str,
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// The end of the run.
#[derive(Debug, Serialize)]
pub struct Finish<'a> {
    pub ts_ns: u64,
    pub duration_ns: u64,
    /// Records of every kind read / lost (ring full).
    pub events: u64,
    pub drops: u64,
    /// Of them, spans read / spans lost.
    pub spans: u64,
    pub span_drops: u64,
    pub stages: &'a [StageTotal<'a>],
}

/// An output of the tracer. Every method but [`Sink::name`] has a default
/// that ignores the record, so a sink implements what it writes. Records
/// come in time order; [`Sink::flush`] ends each batch.
pub trait Sink {
    fn start(&mut self, _start: &Start<'_>) -> Result<(), SinkError> {
        Ok(())
    }
    fn span(&mut self, _span: &Span<'_>) -> Result<(), SinkError> {
        Ok(())
    }
    fn gauge(&mut self, _gauge: &Gauge<'_>) -> Result<(), SinkError> {
        Ok(())
    }
    fn stats(&mut self, _stats: &Stats<'_>) -> Result<(), SinkError> {
        Ok(())
    }
    fn memory(&mut self, _memory: &Memory<'_>) -> Result<(), SinkError> {
        Ok(())
    }
    fn alert(&mut self, _event: &AlertEvent) -> Result<(), SinkError> {
        Ok(())
    }
    fn alloc_site(&mut self, _site: &RankedSite<'_>) -> Result<(), SinkError> {
        Ok(())
    }
    /// The end of a batch of records: write out what is buffered.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// When this sink next wants [`Sink::tick`] (periodic outputs).
    fn next_tick(&self) -> Option<Instant> {
        None
    }
    /// Called at (or after) [`Sink::next_tick`] with the running agent's state.
    fn tick(&mut self, _source: &dyn SnapshotSource) -> Result<(), SinkError> {
        Ok(())
    }
    /// The run ended (called once, after the last records).
    fn finish(
        &mut self,
        _finish: &Finish<'_>,
        _source: &dyn SnapshotSource,
    ) -> Result<(), SinkError> {
        Ok(())
    }
}
