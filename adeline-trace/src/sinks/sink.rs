//! The [`Sink`] trait every output implements, and the records the tracer
//! hands to it.
use std::{io, path::PathBuf, time::Instant};

use adeline_trace_common::{GaugeRecord, SpanRecord};
use serde::Serialize;
use thiserror::Error;

use super::{
    history::HistoryError,
    source::{OutputHealth, SnapshotSource},
};
use crate::{
    alerts::AlertEvent,
    container::ProcessInfo,
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
    /// The reader of a pipe went away (EPIPE): the run stops cleanly.
    #[error("the reader of {what} went away (broken pipe)")]
    Closed { what: &'static str },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("{0}")]
    Otlp(String),
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
    /// Host pids (empty: every process running the targets).
    pub pids: &'a [u32],
    /// What is known of each of `pids`: pid namespace, cgroup, container.
    pub processes: &'a [ProcessInfo],
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
    /// How the default memory mode hears of resident-page changes:
    /// `tp_btf/rss_stat` or `kmem:rss_stat` (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_hook: Option<&'static str>,
}

/// Why probes were attached (the `attach` record, docs/follow.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachReason {
    /// At start, for every target file.
    Start,
    /// The target's path now names another file (a deploy): the new file
    /// got its probes.
    Replaced,
    /// A new process of a followed executable (`--follow`) joined the
    /// traced processes.
    Restart,
    /// A reloaded config (SIGHUP) added stages.
    Reload,
}

/// A probe of an `attach` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachedProbe {
    pub stage: String,
    pub symbol: String,
    pub offset: u64,
}

/// A process that ran a target file before its probes were attached (or
/// before it joined the traced processes): its calls in `gap_ms` were not
/// seen, and how many there were is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Missed {
    pub pid: u32,
    /// From its start (or the file's replacement, if later) to the attach.
    pub gap_ms: u64,
}

/// Probes attached to a target file, or processes that joined the traced
/// ones: at start, and whenever that changes while tracing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attach {
    pub ts_ns: u64,
    pub reason: AttachReason,
    /// The file, as attached to.
    pub target: String,
    /// Its inode (a replaced file has a new one).
    pub inode: u64,
    /// The file this path named before (`replaced`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_inode: Option<u64>,
    /// Processes running the file when its probes were attached (at most
    /// [`Attach::MAX_PIDS`]; `pids_total` counts them all), or the process
    /// that joined (`restart`).
    pub pids: Vec<u32>,
    pub pids_total: usize,
    /// The probes attached (empty for `restart`: the process runs a file
    /// that already has them).
    pub probes: Vec<AttachedProbe>,
    /// Processes that ran the file untraced before this.
    pub missed: Vec<Missed>,
}

impl Attach {
    pub const MAX_PIDS: usize = 64;
}

/// A reloaded config (SIGHUP): the stages removed (their probes detached,
/// their counts kept) and added, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reload {
    pub ts_ns: u64,
    pub config: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Stages whose target or symbol changed: detached and attached again
    /// (their series go on).
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
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
    /// The processes traced now (given, or seen recently).
    pub processes: &'a [ProcessInfo],
    /// Outputs that send records elsewhere and may lose them (OTLP).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub outputs: &'a [OutputHealth],
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
    /// With in-kernel aggregation: the calls counted in the kernel (the
    /// others came as records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregated: Option<u64>,
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
    fn attach(&mut self, _attach: &Attach) -> Result<(), SinkError> {
        Ok(())
    }
    fn reload(&mut self, _reload: &Reload) -> Result<(), SinkError> {
        Ok(())
    }
    /// The end of a batch of records: write out what is buffered.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// What this output delivered and lost so far, when it sends records
    /// elsewhere and may lose them (reported in `stats` and `/metrics`).
    fn health(&self) -> Vec<OutputHealth> {
        Vec::new()
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
