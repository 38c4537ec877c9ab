//! The tracing loop: drains the ring buffer into metrics and the JSON
//! stream, emits stats, evaluates alert rules, and writes the final summary.
use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use adeline_trace_common::{
    python::{SPAN_ERROR, SPAN_GENERATOR},
    COUNTERS, COUNTER_ALLOC_MAP_FULL, COUNTER_ALLOC_NO_STACK, COUNTER_DEPTH_OVERFLOW,
    COUNTER_FILTERED_SHORT, COUNTER_OTHER_RING_FULL, COUNTER_RING_FULL, COUNTER_UNMATCHED_EXIT,
};
use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    alerts::{engine::AlertEngine, hook::HookRunner, AlertEvent, AlertState},
    config::Plan,
    events::{decode, monotonic_ns, Event, WallClock},
    launch::Launched,
    metrics::snapshot::{Snapshot, Window},
    probes::Probes,
    sinks::{
        history::HistoryStore,
        jsonl::{JsonlSink, Record, StageSummary},
        table::{live_table, summary_table},
        trace_out::TraceOut,
    },
    state::{LiveState, SnapshotSource},
    summary::metric_formatter,
    target::process,
};

/// How often the ring buffer is drained (records are submitted without wakeup).
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often traced pids are checked for exit.
const PID_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often alloc mode's outstanding map is walked for the largest sites.
const ALLOC_SITES_EVERY: Duration = Duration::from_secs(5);
/// How often the traced processes' memory is read from procfs.
const MEMORY_EVERY: Duration = Duration::from_secs(1);
/// Tracing every process, a pid is sampled while it produced a record
/// this recently.
const SEEN_RECENTLY: Duration = Duration::from_secs(10);
/// Tracing every process, at most this many recently seen pids are kept.
const MAX_SEEN_PIDS: usize = 64;
/// How often alert rules are evaluated (over the 1 s window).
const ALERT_EVERY: Duration = Duration::from_millis(250);
/// Without `--alert-baseline`, the `baseline` of alert rules is the
/// whole-run snapshot taken this long after the start.
const BASELINE_AFTER: Duration = Duration::from_secs(60);

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal,
    Duration,
    CommandExited,
    PidsExited,
}

/// What the tracer is built from (see run.rs for the order they are made in).
pub struct TracerParts {
    pub probes: Probes,
    /// The JSON Lines event stream.
    pub sink: JsonlSink,
    pub clock: WallClock,
    pub live: Arc<LiveState>,
    pub engine: AlertEngine,
    /// `baseline` of alert rules from `--alert-baseline` (else learned).
    pub baseline: Option<Snapshot>,
    pub trace_out: Option<TraceOut>,
    pub frame_stage: Option<u32>,
    /// The history store and its interval (a window the metrics keep).
    pub history: Option<(HistoryStore, Window)>,
}

/// Alert transitions kept for the history store (it stores each once).
const RECENT_ALERTS: usize = 100;

pub struct Tracer {
    probes: Probes,
    sink: JsonlSink,
    clock: WallClock,
    live: Arc<LiveState>,
    engine: AlertEngine,
    hooks: HookRunner,
    baseline: Option<Snapshot>,
    started: Instant,
    last_counters: [u64; COUNTERS as usize],
    write_spans: bool,
    trace_out: Option<TraceOut>,
    frame_stage: Option<u32>,
    history: Option<(HistoryStore, Window)>,
    recent_alerts: Vec<AlertEvent>,
    /// Records read from the ring buffer (delivered events), and of them spans.
    records: u64,
    spans: u64,
    last_records: u64,
    decode_errors: u64,
    /// Tracing every process: pids that produced span/gauge records, with
    /// the time (monotonic ns) of their latest record. Empty otherwise.
    seen_pids: HashMap<u32, u64>,
    /// Whether to fill `seen_pids` (no -p and no launched command).
    track_seen: bool,
}

impl Tracer {
    pub fn new(plan: &Plan, parts: TracerParts) -> Tracer {
        Tracer {
            probes: parts.probes,
            sink: parts.sink,
            clock: parts.clock,
            live: parts.live,
            engine: parts.engine,
            hooks: HookRunner::new(),
            baseline: parts.baseline,
            started: Instant::now(),
            last_counters: [0; COUNTERS as usize],
            write_spans: plan.spans,
            trace_out: parts.trace_out,
            frame_stage: parts.frame_stage,
            history: parts.history,
            recent_alerts: Vec::new(),
            records: 0,
            spans: 0,
            last_records: 0,
            decode_errors: 0,
            seen_pids: HashMap::new(),
            track_seen: false,
        }
    }

    pub async fn trace(
        &mut self,
        plan: &Plan,
        pids: &[u32],
        mut child: Option<&mut Launched>,
    ) -> Result<Stop> {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let deadline = plan.duration.map(|d| tokio::time::Instant::now() + d);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        let mut stats = tokio::time::interval(plan.stats_interval);
        stats.tick().await;
        let mut alerts = tokio::time::interval(ALERT_EVERY);
        let mut pid_check = tokio::time::interval(PID_CHECK_EVERY);
        let mut memory = tokio::time::interval(MEMORY_EVERY);
        let mut sites = tokio::time::interval(ALLOC_SITES_EVERY);
        sites.tick().await;
        self.track_seen = pids.is_empty();
        let has_rules = !plan.alerts.is_empty();
        let history_every = plan
            .history
            .as_ref()
            .map(|h| h.interval)
            .unwrap_or(Duration::from_secs(3600));
        let mut history = tokio::time::interval(history_every);
        history.tick().await;
        let mut py_window = plan
            .python_window
            .filter(|_| self.probes.has_python())
            .map(|(w, p)| crate::python::window::Schedule::new(w, p));
        let stop = loop {
            let py_next = py_window.as_ref().map(|w| w.next());
            tokio::select! {
                _ = async { tokio::time::sleep_until(py_next.unwrap()).await }, if py_next.is_some() => {
                    if let Some(w) = py_window.as_mut() {
                        let on = w.toggle();
                        self.probes.python_window(on)?;
                    }
                }
                _ = sigint.recv() => break Stop::Signal,
                _ = sigterm.recv() => break Stop::Signal,
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break Stop::Duration,
                _ = drain.tick() => self.drain()?,
                _ = stats.tick() => self.stats(plan)?,
                _ = alerts.tick(), if has_rules => self.evaluate_alerts()?,
                _ = history.tick(), if self.history.is_some() => self.record_history()?,
                _ = memory.tick() => self.sample_memory(pids)?,
                _ = sites.tick(), if self.probes.alloc.is_some() => self.alloc_sites()?,
                _ = pid_check.tick() => {
                    if let Some(c) = child.as_deref_mut() {
                        if c.try_wait().is_some() { break Stop::CommandExited; }
                    } else if !pids.is_empty() && pids.iter().all(|&p| process::ensure_running(p).is_err()) {
                        break Stop::PidsExited;
                    }
                }
            }
        };
        Ok(stop)
    }

    /// Reads every record in the ring buffer.
    pub fn drain(&mut self) -> Result<()> {
        let mut wrote = false;
        let mut metrics = self.live.metrics();
        while let Some(item) = self.probes.ring.next() {
            self.records += 1;
            match decode(&item) {
                Ok(Event::Span(span)) => {
                    self.spans += 1;
                    metrics.record_span(&span);
                    if self.track_seen {
                        self.seen_pids.insert(span.pid, span.start_ns);
                    }
                    if let (Some(t), Some(stage)) =
                        (self.trace_out.as_mut(), metrics.stage_name(span.stage))
                    {
                        let root =
                            self.frame_stage == Some(span.stage) && span.frame_ns == span.start_ns;
                        t.span(&span, stage, root)?;
                    }
                    if !self.write_spans {
                        continue;
                    }
                    if let Some(stage) = metrics.stage_name(span.stage) {
                        self.sink.write(&Record::Span {
                            ts_ns: self.clock.wall_ns(span.start_ns),
                            pid: span.pid,
                            tid: span.tid,
                            stage,
                            dur_ns: span.dur_ns,
                            self_ns: span.self_ns,
                            depth: span.depth,
                            frame_ts_ns: (span.frame_ns != 0)
                                .then(|| self.clock.wall_ns(span.frame_ns)),
                            error: span.flags & SPAN_ERROR != 0,
                            generator: span.flags & SPAN_GENERATOR != 0,
                        })?;
                        wrote = true;
                    }
                }
                Ok(Event::Gauge(g)) => {
                    metrics.record_gauge(&g);
                    if self.track_seen {
                        self.seen_pids.insert(g.pid, g.ts_ns);
                    }
                    if let Some(gauge) = metrics.gauge_name(g.gauge) {
                        self.sink.write(&Record::Gauge {
                            ts_ns: self.clock.wall_ns(g.ts_ns),
                            pid: g.pid,
                            tid: g.tid,
                            gauge,
                            value: g.value,
                        })?;
                        wrote = true;
                    }
                }
                Ok(Event::Map(m)) => metrics.record_map(&m),
                Err(_) => self.decode_errors += 1,
            }
        }
        drop(metrics);
        self.live
            .set_counts(self.records, all_drops(&self.last_counters));
        if wrote {
            self.sink.flush()?;
        }
        if let Some(t) = self.trace_out.as_mut() {
            t.flush()?;
        }
        Ok(())
    }

    fn read_counters(&mut self) -> Result<[u64; COUNTERS as usize]> {
        let now = self.probes.counters()?;
        self.live.set_counts(self.records, all_drops(&now));
        Ok(now)
    }

    /// A `stats` object (and the --live table, and the memory object).
    pub fn stats(&mut self, plan: &Plan) -> Result<()> {
        let now = self.read_counters()?;
        let drops = all_drops(&now) - all_drops(&self.last_counters);
        self.sink.write(&Record::Stats {
            ts_ns: self.clock.wall_ns(monotonic_ns()),
            interval_ns: plan.stats_interval.as_nanos() as u64,
            events: self.records - self.last_records,
            drops,
            events_total: self.records,
            drops_total: all_drops(&now),
            unmatched_total: now[COUNTER_UNMATCHED_EXIT as usize],
            depth_overflow_total: now[COUNTER_DEPTH_OVERFLOW as usize],
            filtered_total: now[COUNTER_FILTERED_SHORT as usize],
        })?;
        self.sink.flush()?;
        self.last_counters = now;
        self.last_records = self.records;
        // Only the memory part: no latency windows merged for it.
        let now = monotonic_ns();
        let processes = self.live.memory_report(Window::S10, now);
        let (stages, mut alloc) = self.live.stage_memory_report(Window::S10, now);
        if let Some(a) = alloc.as_mut() {
            a.sites.clear(); // written as alloc_site objects
        }
        let host = self.live.host_report();
        if !processes.is_empty() || !stages.is_empty() || alloc.is_some() {
            self.sink.write(&Record::Memory {
                ts_ns: self.clock.wall_ns(now),
                processes: &processes,
                stages: &stages,
                alloc: alloc.as_ref(),
                host: host.as_ref(),
            })?;
            self.sink.flush()?;
        }
        let interval = self.live.metrics().take_interval();
        if plan.live {
            let table = live_table(&interval, plan.stats_interval.as_secs_f64(), drops);
            eprintln!("{table}");
        }
        Ok(())
    }

    /// Evaluates the rules over the last second; writes and hooks transitions.
    fn evaluate_alerts(&mut self) -> Result<()> {
        self.read_counters()?;
        if self.baseline.is_none() && self.started.elapsed() >= BASELINE_AFTER {
            self.baseline = Some(self.live.snapshot(Window::All));
        }
        let current = self.live.snapshot(Window::S1);
        let now = self.clock.wall_ns(monotonic_ns());
        let events = self.engine.evaluate(now, &current, self.baseline.as_ref());
        if events.is_empty() {
            return Ok(());
        }
        for event in &events {
            self.sink.write(&Record::Alert(event))?;
            eprintln!("adeline-trace: {}", describe(event));
        }
        self.recent_alerts.extend(events.iter().cloned());
        let excess = self.recent_alerts.len().saturating_sub(RECENT_ALERTS);
        self.recent_alerts.drain(..excess);
        self.sink.flush()?;
        for job in self.engine.take_hook_jobs() {
            self.hooks.run(&job);
        }
        self.live.set_alerts(self.engine.active());
        Ok(())
    }

    /// Reads the traced processes' memory: the given pids (-p or the
    /// launched command), or, tracing every process, the pids that produced
    /// records in the last [`SEEN_RECENTLY`] (the most recent
    /// [`MAX_SEEN_PIDS`]).
    fn sample_memory(&mut self, pids: &[u32]) -> Result<()> {
        self.refresh_memory()?;
        self.sample_processes(pids);
        Ok(())
    }

    /// The kernel's per-stage memory totals (resident bytes charged; alloc
    /// mode's allocations) into the live state: every second, and once more
    /// before the final objects.
    pub fn refresh_memory(&mut self) -> Result<()> {
        let stages = self.live.metrics().stage_names().len();
        let resident = self.probes.stage_resident(stages)?;
        self.live
            .stage_memory()
            .record_resident(monotonic_ns(), resident);
        let Some(maps) = self.probes.alloc.as_ref() else {
            return Ok(());
        };
        let totals = maps.totals(stages);
        let c = self.probes.counters()?;
        let lost = (
            c[COUNTER_ALLOC_MAP_FULL as usize],
            c[COUNTER_ALLOC_NO_STACK as usize],
        );
        self.live
            .stage_memory()
            .record_alloc(monotonic_ns(), totals, lost);
        Ok(())
    }

    /// Alloc mode: the largest outstanding sites, into the live state and
    /// as `alloc_site` objects.
    pub fn alloc_sites(&mut self) -> Result<()> {
        let Some(maps) = self.probes.alloc.as_mut() else {
            return Ok(());
        };
        let names = self.live.metrics().stage_names().to_vec();
        let now = monotonic_ns();
        let sites = maps.sites(now, &names);
        let ts_ns = self.clock.wall_ns(now);
        for (i, site) in sites.iter().enumerate() {
            self.sink.write(&Record::AllocSite {
                ts_ns,
                rank: i + 1,
                site,
            })?;
        }
        self.sink.flush()?;
        self.live.stage_memory().set_alloc_sites(sites);
        Ok(())
    }

    fn sample_processes(&mut self, pids: &[u32]) {
        let probes = &self.probes;
        let kernel_rss = |pid| probes.kernel_rss(pid);
        if !pids.is_empty() {
            self.live.sample_memory(pids.iter().copied(), &kernel_rss);
            return;
        }
        let cutoff = monotonic_ns().saturating_sub(SEEN_RECENTLY.as_nanos() as u64);
        self.seen_pids.retain(|_, &mut seen| seen >= cutoff);
        let mut recent: Vec<(u32, u64)> = self.seen_pids.iter().map(|(&p, &t)| (p, t)).collect();
        if recent.len() > MAX_SEEN_PIDS {
            recent.sort_unstable_by_key(|&(_, seen)| std::cmp::Reverse(seen));
            recent.truncate(MAX_SEEN_PIDS);
        }
        self.live
            .sample_memory(recent.into_iter().map(|(p, _)| p), &kernel_rss);
    }

    /// One history row per stage for the interval that just ended.
    fn record_history(&mut self) -> Result<()> {
        if let Some((store, window)) = self.history.as_mut() {
            if let Some(snapshot) = self.live.take_period(*window) {
                store.record(&snapshot, &self.recent_alerts)?;
            }
        }
        Ok(())
    }

    pub fn finish(
        mut self,
        elapsed: Duration,
        stop: Stop,
        summary_out: Option<&Path>,
    ) -> Result<()> {
        let counters = self.read_counters()?;
        let metrics = self.live.metrics();
        let totals = metrics.totals();
        let stages = totals
            .iter()
            .map(|&(stage, latency)| StageSummary { stage, latency })
            .collect();
        self.sink.write(&Record::Summary {
            ts_ns: self.clock.wall_ns(monotonic_ns()),
            duration_ns: elapsed.as_nanos() as u64,
            events: self.records,
            drops: all_drops(&counters),
            spans: self.spans,
            span_drops: counters[COUNTER_RING_FULL as usize],
            stages,
        })?;
        self.sink.flush()?;
        eprint!("{}", summary_table(&totals));
        drop(metrics);
        if let Some(path) = summary_out {
            let snapshot = self.live.snapshot(Window::All);
            let json = serde_json::to_string_pretty(&snapshot)?;
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write the summary to {}", path.display()))?;
        }
        eprintln!(
            "adeline-trace: stopped ({}) after {:.1}s: {} events, {} dropped, {} unmatched returns",
            match stop {
                Stop::Signal => "signal",
                Stop::Duration => "duration reached",
                Stop::CommandExited => "command exited",
                Stop::PidsExited => "traced processes exited",
            },
            elapsed.as_secs_f64(),
            self.records,
            all_drops(&counters),
            counters[COUNTER_UNMATCHED_EXIT as usize],
        );
        if self.decode_errors > 0 {
            eprintln!(
                "adeline-trace: {} records could not be decoded",
                self.decode_errors
            );
        }
        self.hooks.finish();
        if let Some(t) = self.trace_out.take() {
            t.finish().context("writing the trace file")?;
        }
        Ok(())
    }
}

/// Records lost because the ring buffer was full, of every kind.
fn all_drops(counters: &[u64; COUNTERS as usize]) -> u64 {
    counters[COUNTER_RING_FULL as usize] + counters[COUNTER_OTHER_RING_FULL as usize]
}

/// One stderr line for an alert transition, values in the rule's units.
fn describe(event: &AlertEvent) -> String {
    let state = match event.state {
        AlertState::Firing => "ALERT firing",
        AlertState::Resolved => "alert resolved",
    };
    let fmt = metric_formatter(&event.rule);
    format!(
        "{state}: {} (value {}, threshold {})",
        event.rule,
        fmt(event.value),
        fmt(event.threshold)
    )
}
