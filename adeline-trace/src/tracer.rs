//! The tracing loop: drains the ring buffer, aggregates into the live
//! metrics and hands every record on to the sinks; every stats interval
//! the counters and memory, every 250 ms the alert rules, every second the
//! processes' memory (and every 5 s alloc mode's largest sites). It never
//! knows which outputs exist (sinks/).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use adeline_trace_common::{
    COUNTERS, COUNTER_ABANDONED, COUNTER_ALLOC_MAP_FULL, COUNTER_ALLOC_NO_STACK,
    COUNTER_DEPTH_OVERFLOW, COUNTER_FILTERED_SHORT, COUNTER_OTHER_RING_FULL, COUNTER_RING_FULL,
    COUNTER_UNMATCHED_EXIT, COUNTER_UNWOUND,
};
use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    aggregating::Aggregating,
    alerts::alerting::Alerting,
    events::{decode, monotonic_ns, Event},
    journal::{self, Priority},
    launch::Launched,
    metrics::{
        inkernel,
        memory::alloc::name_sites,
        snapshot::{Percentiles, Window},
    },
    probes::Probes,
    sinks::{
        Finish, Gauge, Memory, RankedSite, Sink, Sinks, SnapshotSource, Span, StageTotal, Stats,
    },
    state::LiveState,
    symbols::process,
};

/// How often the ring buffer is drained (records are submitted without wakeup).
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often traced pids are checked for exit (at a drain).
const PID_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often the traced processes' memory is read from procfs.
const MEMORY_EVERY: Duration = Duration::from_secs(1);
/// How often alloc mode's outstanding map is walked for the largest sites
/// (at a memory tick).
const ALLOC_SITES_EVERY: Duration = Duration::from_secs(5);
/// How often alert rules are evaluated (over the 1 s window).
const ALERT_EVERY: Duration = Duration::from_millis(250);
/// Tracing every process, a pid is sampled while it produced a record
/// this recently.
const SEEN_RECENTLY: Duration = Duration::from_secs(10);
/// Tracing every process, at most this many recently seen pids are kept.
const MAX_SEEN_PIDS: usize = 64;
/// Sinks that want no tick are asked again this late.
const NO_TICK: Duration = Duration::from_secs(3600);

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal,
    Duration,
    CommandExited,
    PidsExited,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Stop::Signal => "signal",
            Stop::Duration => "duration reached",
            Stop::CommandExited => "command exited",
            Stop::PidsExited => "traced processes exited",
        }
    }
}

/// When the loop stops by itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    /// `--duration`.
    pub duration: Option<Duration>,
}

/// Records read from the ring buffer, and the kernel's counters as last read.
#[derive(Debug, Default)]
struct Counts {
    /// Records read (delivered events), and of them spans.
    records: u64,
    spans: u64,
    /// `records` at the previous stats interval.
    last_records: u64,
    decode_errors: u64,
    /// The kernel's counters at the previous stats interval.
    last_counters: [u64; COUNTERS as usize],
}

/// Tracing every process: the pids that produced span or gauge records,
/// with the time (monotonic ns) of their latest record.
#[derive(Debug, Default)]
struct SeenPids(Option<HashMap<u32, u64>>);

impl SeenPids {
    /// Notes a record of `pid`; true when the pid is new.
    fn saw(&mut self, pid: u32, ts_ns: u64) -> bool {
        match self.0.as_mut() {
            Some(seen) => seen.insert(pid, ts_ns).is_none(),
            None => false,
        }
    }

    /// The most recent [`MAX_SEEN_PIDS`] seen in the last [`SEEN_RECENTLY`].
    fn recent(&mut self) -> Vec<u32> {
        let Some(seen) = self.0.as_mut() else {
            return Vec::new();
        };
        let cutoff = monotonic_ns().saturating_sub(SEEN_RECENTLY.as_nanos() as u64);
        seen.retain(|_, &mut t| t >= cutoff);
        let mut recent: Vec<(u32, u64)> = seen.iter().map(|(&p, &t)| (p, t)).collect();
        if recent.len() > MAX_SEEN_PIDS {
            recent.sort_unstable_by_key(|&(_, t)| std::cmp::Reverse(t));
            recent.truncate(MAX_SEEN_PIDS);
        }
        recent.into_iter().map(|(p, _)| p).collect()
    }
}

pub struct Tracer {
    probes: Probes,
    live: Arc<LiveState>,
    sinks: Sinks,
    alerting: Alerting,
    /// The traced pids (-p or the launched command); empty: every process.
    pids: Vec<u32>,
    seen: SeenPids,
    counts: Counts,
    stats_interval: Duration,
    /// Stage id of the frame root.
    frame_stage: Option<u32>,
    /// In-kernel aggregation (None: off).
    aggregating: Option<Aggregating>,
}

impl Tracer {
    pub fn new(
        probes: Probes,
        live: Arc<LiveState>,
        sinks: Sinks,
        alerting: Alerting,
        pids: Vec<u32>,
        stats_interval: Duration,
        frame_stage: Option<u32>,
    ) -> Tracer {
        let seen = SeenPids(pids.is_empty().then(HashMap::new));
        Tracer {
            probes,
            live,
            sinks,
            alerting,
            pids,
            seen,
            counts: Counts::default(),
            stats_interval,
            frame_stage,
            aggregating: None,
        }
    }

    /// With in-kernel aggregation (its control loop).
    pub fn with_aggregating(mut self, aggregating: Option<Aggregating>) -> Tracer {
        self.aggregating = aggregating;
        self
    }

    pub async fn trace(&mut self, until: Until, mut child: Option<&mut Launched>) -> Result<Stop> {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let deadline = until.duration.map(|d| tokio::time::Instant::now() + d);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        let mut stats = tokio::time::interval(self.stats_interval);
        stats.tick().await;
        let mut alerts = tokio::time::interval(ALERT_EVERY);
        let mut memory = tokio::time::interval(MEMORY_EVERY);
        let mut kernel_agg = tokio::time::interval(Duration::from_millis(inkernel::READ_EVERY_MS));
        let aggregating = self.aggregating.is_some();
        let started = Instant::now();
        let mut next_pid_check = started;
        let mut next_sites = started + ALLOC_SITES_EVERY;
        let has_rules = self.alerting.has_rules();
        let stop = loop {
            let sink_tick = self
                .sinks
                .next_tick()
                .unwrap_or_else(|| Instant::now() + NO_TICK);
            let py_next = self.probes.python_next();
            tokio::select! {
                _ = async { tokio::time::sleep_until(py_next.unwrap()).await }, if py_next.is_some() => {
                    self.probes.python_toggle()?;
                }
                _ = sigint.recv() => break Stop::Signal,
                _ = sigterm.recv() => break Stop::Signal,
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break Stop::Duration,
                _ = drain.tick() => {
                    self.drain()?;
                    if Instant::now() >= next_pid_check {
                        next_pid_check += PID_CHECK_EVERY;
                        if let Some(stop) = self.exited(child.as_deref_mut()) {
                            break stop;
                        }
                    }
                }
                _ = stats.tick() => self.stats()?,
                _ = kernel_agg.tick(), if aggregating => self.read_aggregates()?,
                _ = alerts.tick(), if has_rules => self.evaluate_alerts()?,
                _ = memory.tick() => {
                    self.sample_memory()?;
                    if self.probes.alloc.is_some() && Instant::now() >= next_sites {
                        next_sites += ALLOC_SITES_EVERY;
                        self.alloc_sites()?;
                    }
                }
                _ = tokio::time::sleep_until(sink_tick.into()) => self.sinks.tick(self.live.as_ref())?,
            }
        };
        Ok(stop)
    }

    /// Whether the launched command, or every traced pid, has exited.
    fn exited(&self, child: Option<&mut Launched>) -> Option<Stop> {
        if let Some(c) = child {
            return c.try_wait().is_some().then_some(Stop::CommandExited);
        }
        let gone = !self.pids.is_empty()
            && self
                .pids
                .iter()
                .all(|&p| process::ensure_running(p).is_err());
        gone.then_some(Stop::PidsExited)
    }

    /// Reads every record in the ring buffer into the metrics and the sinks.
    pub fn drain(&mut self) -> Result<()> {
        let mut metrics = self.live.metrics();
        while let Some(item) = self.probes.ring.next() {
            self.counts.records += 1;
            match decode(&item) {
                Ok(Event::Span(record)) => {
                    self.counts.spans += 1;
                    metrics.record_span(&record);
                    if let Some(a) = self.aggregating.as_mut() {
                        a.saw_span(record.stage);
                    }
                    if self.seen.saw(record.pid, record.start_ns) {
                        // Read while it runs: it may be gone at the next sample.
                        self.live.note_process(record.pid);
                    }
                    if let Some(stage) = metrics.stage_name(record.stage) {
                        self.sinks.span(&Span {
                            record: &record,
                            stage,
                            ts_ns: self.live.wall_ns(record.start_ns),
                            frame_ts_ns: (record.frame_ns != 0)
                                .then(|| self.live.wall_ns(record.frame_ns)),
                            frame_root: self.frame_stage == Some(record.stage)
                                && record.frame_ns == record.start_ns,
                        })?;
                    }
                }
                Ok(Event::Gauge(record)) => {
                    metrics.record_gauge(&record);
                    if self.seen.saw(record.pid, record.ts_ns) {
                        self.live.note_process(record.pid);
                    }
                    if let Some(gauge) = metrics.gauge_name(record.gauge) {
                        self.sinks.gauge(&Gauge {
                            record: &record,
                            gauge,
                            ts_ns: self.live.wall_ns(record.ts_ns),
                        })?;
                    }
                }
                Ok(Event::Map(m)) => metrics.record_map(&m),
                Err(_) => self.counts.decode_errors += 1,
            }
        }
        drop(metrics);
        self.live
            .set_counts(self.counts.records, all_drops(&self.counts.last_counters));
        self.sinks.flush()?;
        Ok(())
    }

    /// Reads the kernel's histograms of the aggregated stages.
    pub fn read_aggregates(&mut self) -> Result<()> {
        if let (Some(a), Some(maps)) = (self.aggregating.as_mut(), self.probes.aggregation.as_mut())
        {
            a.tick(maps, &mut self.live.metrics())?;
        }
        Ok(())
    }

    fn read_counters(&mut self) -> Result<[u64; COUNTERS as usize]> {
        let now = self.probes.counters()?;
        self.live.set_counts(self.counts.records, all_drops(&now));
        Ok(now)
    }

    /// The counters and latency of the interval that ended, and the memory
    /// object.
    pub fn stats(&mut self) -> Result<()> {
        let now = self.read_counters()?;
        let drops = all_drops(&now) - all_drops(&self.counts.last_counters);
        let interval = self.live.metrics().take_interval();
        let processes = self.live.traced_processes();
        let outputs = self.sinks.health();
        self.live.set_outputs(outputs.clone());
        self.sinks.stats(&Stats {
            ts_ns: self.live.wall_ns(monotonic_ns()),
            interval_ns: self.stats_interval.as_nanos() as u64,
            events: self.counts.records - self.counts.last_records,
            drops,
            events_total: self.counts.records,
            drops_total: all_drops(&now),
            unmatched_total: now[COUNTER_UNMATCHED_EXIT as usize],
            depth_overflow_total: now[COUNTER_DEPTH_OVERFLOW as usize],
            filtered_total: now[COUNTER_FILTERED_SHORT as usize],
            unwound_total: now[COUNTER_UNWOUND as usize],
            abandoned_total: now[COUNTER_ABANDONED as usize],
            processes: &processes,
            outputs: &outputs,
            interval: &interval,
        })?;
        self.counts.last_counters = now;
        self.counts.last_records = self.counts.records;
        // Only the memory part: no latency windows merged for it.
        let now = monotonic_ns();
        let processes = self.live.memory_report(Window::S10, now);
        let (stages, mut alloc) = self.live.stage_memory_report(Window::S10, now);
        if let Some(a) = alloc.as_mut() {
            a.sites.clear(); // handed on as alloc sites
        }
        let host = self.live.host_report();
        self.sinks.memory(&Memory {
            ts_ns: self.live.wall_ns(now),
            processes: &processes,
            stages: &stages,
            host: host.as_ref(),
            alloc: alloc.as_ref(),
        })?;
        self.sinks.flush()?;
        Ok(())
    }

    /// Evaluates the rules over the last second; hands transitions on and
    /// starts their hooks.
    fn evaluate_alerts(&mut self) -> Result<()> {
        self.read_counters()?;
        let live = self.live.as_ref();
        let current = live.snapshot(Window::S1);
        let now = live.wall_ns(monotonic_ns());
        let events = self
            .alerting
            .evaluate(now, &current, || live.snapshot(Window::All));
        if events.is_empty() {
            return Ok(());
        }
        for event in &events {
            self.sinks.alert(event)?;
        }
        self.sinks.flush()?;
        self.alerting.run_hooks();
        self.live.set_alerts(self.alerting.active());
        Ok(())
    }

    /// Reads the traced processes' memory: the given pids (-p or the
    /// launched command), or, tracing every process, the pids that produced
    /// records in the last [`SEEN_RECENTLY`] (the most recent
    /// [`MAX_SEEN_PIDS`]).
    fn sample_memory(&mut self) -> Result<()> {
        self.refresh_memory()?;
        let pids = match self.pids.is_empty() {
            true => self.seen.recent(),
            false => self.pids.clone(),
        };
        let probes = &self.probes;
        self.live.sample_memory(pids, &|pid| probes.kernel_rss(pid));
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
    /// on to the sinks.
    pub fn alloc_sites(&mut self) -> Result<()> {
        let Some(maps) = self.probes.alloc.as_mut() else {
            return Ok(());
        };
        let names = self.live.metrics().stage_names().to_vec();
        let now = monotonic_ns();
        let sites = name_sites(maps.sites(now), &names);
        let ts_ns = self.live.wall_ns(now);
        for (i, site) in sites.iter().enumerate() {
            self.sinks.alloc_site(&RankedSite {
                ts_ns,
                rank: i + 1,
                site,
            })?;
        }
        self.sinks.flush()?;
        self.live.stage_memory().set_alloc_sites(sites);
        Ok(())
    }

    /// The whole-run totals to the sinks, the stop line, the hooks.
    pub fn finish(mut self, elapsed: Duration, stop: Stop) -> Result<()> {
        let counters = self.read_counters()?;
        let totals: Vec<(String, Percentiles)> = self
            .live
            .metrics()
            .totals()
            .into_iter()
            .map(|(stage, latency)| (stage.to_string(), latency))
            .collect();
        let stages: Vec<StageTotal> = totals
            .iter()
            .map(|(stage, latency)| StageTotal {
                stage,
                latency: *latency,
            })
            .collect();
        self.sinks.finish(
            &Finish {
                ts_ns: self.live.wall_ns(monotonic_ns()),
                duration_ns: elapsed.as_nanos() as u64,
                events: self.counts.records,
                drops: all_drops(&counters),
                spans: self.counts.spans,
                span_drops: counters[COUNTER_RING_FULL as usize],
                stages: &stages,
            },
            self.live.as_ref(),
        )?;
        eprintln!(
            "{}adeline-trace: stopped ({}) after {:.1}s: {} events, {} dropped, {} unmatched returns",
            journal::prefix(Priority::Info),
            stop.as_str(),
            elapsed.as_secs_f64(),
            self.counts.records,
            all_drops(&counters),
            counters[COUNTER_UNMATCHED_EXIT as usize],
        );
        for o in self.sinks.health() {
            eprintln!(
                "{}adeline-trace: {}: {} exported, {} dropped, {} failed exports",
                journal::prefix(if o.dropped > 0 {
                    Priority::Warning
                } else {
                    Priority::Info
                }),
                o.output,
                o.exported,
                o.dropped,
                o.failed_exports
            );
        }
        if self.counts.decode_errors > 0 {
            eprintln!(
                "{}adeline-trace: {} records could not be decoded",
                journal::prefix(Priority::Warning),
                self.counts.decode_errors
            );
        }
        self.alerting.finish();
        let detached = self.probes.detach_uprobes();
        eprintln!(
            "adeline-trace: detached {} uprobes in {} ms (programs off after {} ms)",
            detached.probes,
            detached.elapsed.as_millis(),
            detached.unhooked.as_millis()
        );
        Ok(())
    }
}

/// Records lost because the ring buffer was full, of every kind.
fn all_drops(counters: &[u64; COUNTERS as usize]) -> u64 {
    counters[COUNTER_RING_FULL as usize] + counters[COUNTER_OTHER_RING_FULL as usize]
}
