//! Where results go. Every output implements [`Sink`]: the tracer hands
//! each one the same records (a span, a gauge sample, the stats of an
//! interval, the memory object, an alert transition, an allocation site,
//! the end of the run) and never knows which outputs exist. [`open`]
//! builds them from the plan's [`Outputs`]; adding an output is one file
//! here and one line in [`open`].
//!
//! - [`jsonl`]: the JSON Lines event stream (`-o`, docs/events.md);
//! - [`trace_out`]: a Chrome trace-event timeline (`--trace-out`);
//! - [`history`]: one SQLite row per stage per interval (`--history`);
//! - [`table`]: the tables and alert lines on stderr (`--live`);
//! - [`summary_out`]: the whole-run snapshot on exit (`--summary-out`);
//! - [`otlp`]: OpenTelemetry metrics and frame traces to a collector (`--otlp`).
//! - [`profile`]: the whole run's profile on exit (`--profile-out`).
//!
//! The HTTP server ([`api`], with [`dashboard`], [`prometheus`] and the
//! history endpoint) is no sink: it reads the running agent through
//! [`source::SnapshotSource`] whenever a client asks.
use std::{path::PathBuf, time::Instant};

use crate::alerts::AlertEvent;

pub mod api;
pub mod dashboard;
pub mod history;
pub mod jsonl;
pub mod otlp;
pub mod profile;
pub mod prometheus;
pub mod sink;
pub mod source;
pub mod summary_out;
pub mod table;
pub mod trace_out;

pub use sink::{
    Attach, AttachReason, AttachedProbe, Finish, Gauge, Memory, Missed, PlacementInfo, ProbeInfo,
    RankedSite, Reload, Sink, SinkError, Span, StageTotal, Start, Stats,
};
pub use source::{OutputHealth, SnapshotSource};

/// The outputs the plan asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// Where the JSON Lines events go.
    pub events: jsonl::Output,
    /// Write a `span` event per call.
    pub spans: bool,
    /// The per-stage table on stderr every stats interval.
    pub live: bool,
    /// Chrome trace-event output.
    pub trace_out: Option<PathBuf>,
    pub history: Option<history::HistorySpec>,
    /// The whole-run snapshot, written on exit.
    pub summary_out: Option<PathBuf>,
    /// OpenTelemetry export.
    pub otlp: Option<otlp::OtlpSpec>,
    /// The whole run's profile, written on exit.
    pub profile_out: Option<PathBuf>,
}

/// Every output of a run, in the order they receive each record.
#[derive(Default)]
pub struct Sinks(Vec<Box<dyn Sink + Send>>);

impl Sinks {
    pub fn push(&mut self, sink: impl Sink + Send + 'static) {
        self.0.push(Box::new(sink));
    }
}

impl Sinks {
    /// Hands a record to every sink, even after one failed (a closed
    /// events pipe must not keep the record from the other outputs); the
    /// first error is returned.
    fn each(
        &mut self,
        mut f: impl FnMut(&mut (dyn Sink + Send)) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        let mut first = Ok(());
        for sink in &mut self.0 {
            let result = f(sink.as_mut());
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// Hands each record to every sink in turn.
impl Sink for Sinks {
    fn start(&mut self, start: &Start<'_>) -> Result<(), SinkError> {
        self.each(|s| s.start(start))
    }
    fn span(&mut self, span: &Span<'_>) -> Result<(), SinkError> {
        self.each(|s| s.span(span))
    }
    fn gauge(&mut self, gauge: &Gauge<'_>) -> Result<(), SinkError> {
        self.each(|s| s.gauge(gauge))
    }
    fn stats(&mut self, stats: &Stats<'_>) -> Result<(), SinkError> {
        self.each(|s| s.stats(stats))
    }
    fn memory(&mut self, memory: &Memory<'_>) -> Result<(), SinkError> {
        self.each(|s| s.memory(memory))
    }
    fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        self.each(|s| s.alert(event))
    }
    fn alloc_site(&mut self, site: &RankedSite<'_>) -> Result<(), SinkError> {
        self.each(|s| s.alloc_site(site))
    }
    fn attach(&mut self, attach: &Attach) -> Result<(), SinkError> {
        self.each(|s| s.attach(attach))
    }
    fn reload(&mut self, reload: &Reload) -> Result<(), SinkError> {
        self.each(|s| s.reload(reload))
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        self.each(|s| s.flush())
    }
    fn health(&self) -> Vec<OutputHealth> {
        self.0.iter().flat_map(|s| s.health()).collect()
    }
    fn next_tick(&self) -> Option<Instant> {
        self.0.iter().filter_map(|s| s.next_tick()).min()
    }
    /// Ticks the sinks whose time has come.
    fn tick(&mut self, source: &dyn SnapshotSource) -> Result<(), SinkError> {
        let now = Instant::now();
        self.each(|s| match s.next_tick() {
            Some(t) if t <= now => s.tick(source),
            _ => Ok(()),
        })
    }
    fn finish(
        &mut self,
        finish: &Finish<'_>,
        source: &dyn SnapshotSource,
    ) -> Result<(), SinkError> {
        self.each(|s| s.finish(finish, source))
    }
}

/// What opening the outputs needs besides the plan.
#[derive(Debug, Clone, Copy)]
pub struct OpenContext {
    /// Monotonic ns that is time 0 in the trace file.
    pub origin_ns: u64,
}

/// Opens every output of `outputs` (files are created here, so their
/// errors come before anything is attached).
pub fn open(outputs: &Outputs, ctx: OpenContext) -> Result<Sinks, SinkError> {
    let mut sinks = Sinks::default();
    sinks.push(jsonl::JsonlSink::open(&outputs.events, outputs.spans)?);
    sinks.push(table::Console::new(outputs.live));
    if let Some(path) = &outputs.summary_out {
        sinks.push(summary_out::SummaryOut::new(path));
    }
    if let Some(path) = &outputs.trace_out {
        sinks.push(trace_out::TraceOut::create(path, ctx.origin_ns)?);
    }
    if let Some(spec) = &outputs.history {
        sinks.push(history::HistorySink::open(spec)?);
    }
    if let Some(spec) = &outputs.otlp {
        sinks.push(otlp::OtlpSink::open(spec)?);
    }
    if let Some(path) = &outputs.profile_out {
        sinks.push(profile::out::ProfileOut::create(path)?);
    }
    Ok(sinks)
}
