//! The tracing loop: drains the ring buffer, aggregates into the live
//! metrics and hands every record on to the sinks; every stats interval
//! the counters and memory, every 250 ms the alert rules, every second the
//! processes' memory (and every 5 s alloc mode's largest sites). It never
//! knows which outputs exist (sinks/).
use std::{
    collections::HashMap,
    io::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use adeline_trace_common::{
    COUNTERS, COUNTER_ABANDONED, COUNTER_ALLOC_MAP_FULL, COUNTER_ALLOC_NO_STACK,
    COUNTER_DEPTH_OVERFLOW, COUNTER_FILTERED_SHORT, COUNTER_OTHER_RING_FULL, COUNTER_RING_FULL,
    COUNTER_UNMATCHED_EXIT, COUNTER_UNWOUND,
};
use anyhow::Result;

use crate::{
    aggregating::Aggregating,
    alerts::{alerting::Alerting, parse_rule, AlertEvent, AlertState},
    events::{decode, monotonic_ns, Event},
    follow::{ConfigSource, Followed, Follower, FOLLOW_EVERY},
    journal::{self, Priority},
    launch::Launched,
    metrics::{
        inkernel,
        memory::alloc::name_sites,
        profile::{alert_profile_path, AlertCapture, ProfileQuery},
        snapshot::{Percentiles, Window},
    },
    probes::Probes,
    signals::{OnSignal, Signals},
    sinks::{
        Attach, AttachReason, Finish, Gauge, Memory, RankedSite, Reload, Sink, SinkError, Sinks,
        SnapshotSource, Span, StageTotal, Stats,
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
    /// A signal whose action is to stop (its name; signals.rs).
    Signal(&'static str),
    Duration,
    CommandExited,
    PidsExited,
    /// The reader of the JSON Lines events went away (a closed pipe).
    OutputClosed,
}

impl Stop {
    fn describe(self) -> String {
        match self {
            Stop::Signal(name) => format!("signal {name}"),
            Stop::Duration => "duration reached".into(),
            Stop::CommandExited => "command exited".into(),
            Stop::PidsExited => "traced processes exited".into(),
            Stop::OutputClosed => "events output closed".into(),
        }
    }
}

/// The loop stops on this error: the JSON Lines output's reader is gone.
fn output_closed(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<SinkError>(),
        Some(SinkError::Closed { .. })
    )
}

/// When the loop stops by itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    /// `--duration`.
    pub duration: Option<Duration>,
    /// `--follow`: the traced processes' exit does not stop tracing.
    pub follow: bool,
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
    /// Profiles on alert: how long to capture, and the captures running.
    alert_capture: Option<Duration>,
    captures: Vec<PendingCapture>,
    /// Owns the uprobe links while tracing: follows replaced target files
    /// (when `follow_polls`), applies reloads.
    follower: Option<Follower>,
    follow_polls: bool,
    /// Service mode: the config file SIGHUP re-reads.
    config: Option<(String, ConfigSource)>,
    /// In-kernel aggregation (None: off).
    aggregating: Option<Aggregating>,
}

/// An alert's profile being captured.
#[derive(Debug)]
struct PendingCapture {
    id: u32,
    rule: String,
    stage: String,
    /// Monotonic and wall-clock ns the alert fired.
    fired_mono: u64,
    fired_wall: u64,
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
            alert_capture: None,
            captures: Vec::new(),
            follower: None,
            follow_polls: false,
            config: None,
            aggregating: None,
        }
    }

    /// With in-kernel aggregation (its control loop).
    pub fn with_aggregating(mut self, aggregating: Option<Aggregating>) -> Tracer {
        self.aggregating = aggregating;
        self
    }

    /// Captures a stage's profile for `capture` when an alert on it fires
    /// (the run profiles).
    pub fn with_alert_profiles(mut self, capture: Duration) -> Tracer {
        self.alert_capture = Some(capture).filter(|d| !d.is_zero());
        self
    }

    /// Service mode: SIGHUP re-reads `path` through `source` (needs a
    /// [`Follower`]).
    pub fn set_config(&mut self, path: String, source: ConfigSource) {
        self.config = Some((path, source));
    }

    /// SIGHUP: applies the config file's stages again, or refuses it with
    /// one line (the running config stays).
    fn reload(&mut self) -> Result<()> {
        let (Some((path, source)), Some(follower)) = (self.config.as_mut(), self.follower.as_mut())
        else {
            return Ok(());
        };
        let refuse = |why: &str| {
            eprintln!(
                "{}error: reload of {path} refused, still tracing with the previous config: {why}",
                journal::prefix(Priority::Err)
            );
        };
        let (stages, warnings) = match source() {
            Ok(new) => new,
            Err(why) => {
                refuse(&why);
                return Ok(());
            }
        };
        let live = &self.live;
        let changes = match follower.reload(&mut self.probes, &stages, |name| {
            live.metrics().add_stage(name.to_string())
        }) {
            Ok(c) => c,
            Err(e) => {
                refuse(&e.to_string());
                return Ok(());
            }
        };
        let mut warnings: Vec<String> = warnings.into_iter().chain(changes.warnings).collect();
        if let Some(a) = self.aggregating.as_mut() {
            // The added stages follow the start's rule (docs/aggregation.md).
            let metrics = self.live.metrics();
            let names = metrics.stage_names();
            warnings.extend(a.grow(names.len()).map(|i| {
                format!(
                    "stage {} keeps a record per call: in-kernel aggregation has room for {} stages (twice the start's, at least 16 more); restart the agent to aggregate it",
                    names[i],
                    a.capacity()
                )
            }));
        }
        for w in &warnings {
            eprintln!("{}warning: {w}", journal::prefix(Priority::Warning));
        }
        eprintln!(
            "{}adeline-trace: reloaded {path}: {} stages added, {} removed, {} changed, {} unchanged",
            journal::prefix(Priority::Info),
            changes.added.len(),
            changes.removed.len(),
            changes.changed.len(),
            changes.unchanged.len()
        );
        let record = Reload {
            ts_ns: self.live.wall_ns(monotonic_ns()),
            config: path.clone(),
            added: changes.added,
            removed: changes.removed,
            changed: changes.changed,
            unchanged: changes.unchanged,
        };
        self.sinks.reload(&record)?;
        let attached = follower.attached(AttachReason::Reload, &changes.sites, &self.probes);
        for a in attached {
            self.attached(a)?;
        }
        Ok(())
    }

    /// Follows the targets while tracing ([`Follower`]).
    /// `polls`: check the target paths (probes for every process).
    pub fn set_follower(&mut self, follower: Follower, polls: bool) {
        self.follower = Some(follower);
        self.follow_polls = polls;
    }

    /// Probes attached (at start or while tracing) to the sinks.
    pub fn attached(&mut self, mut attach: Attach) -> Result<()> {
        attach.ts_ns = self.live.wall_ns(monotonic_ns());
        self.sinks.attach(&attach)?;
        Ok(())
    }

    /// Checks the followed targets; reports what changed.
    fn follow(&mut self) -> Result<()> {
        let Some(follower) = self.follower.as_mut() else {
            return Ok(());
        };
        for found in follower.poll(&mut self.probes) {
            match found {
                Followed::Attached(a) => {
                    let slowest = a.missed.iter().map(|m| m.gap_ms).max();
                    let what = match a.reason {
                        AttachReason::Restart => format!(
                            "process {} started {} again: traced",
                            a.pids.first().copied().unwrap_or(0),
                            a.target
                        ),
                        _ => format!(
                            "{} was replaced (inode {} -> {}): {} probes attached",
                            a.target,
                            a.previous_inode.unwrap_or(0),
                            a.inode,
                            a.probes.len()
                        ),
                    };
                    eprintln!(
                        "{}adeline-trace: {what}{}",
                        journal::prefix(Priority::Info),
                        match slowest {
                            Some(ms) => format!(
                                "; {} processes ran it untraced for up to {ms} ms",
                                a.missed.len()
                            ),
                            None => String::new(),
                        }
                    );
                    self.attached(a)?;
                }
                Followed::Warning(w) => {
                    eprintln!("{}warning: {w}", journal::prefix(Priority::Warning))
                }
            }
        }
        Ok(())
    }

    /// Traces until a stop signal, `until`, the launched command's exit
    /// (unless following restarts), the exit of every traced pid, or the
    /// events output's reader going away. SIGHUP with a config reloads it.
    pub async fn trace(
        &mut self,
        until: Until,
        mut child: Option<&mut Launched>,
        signals: &mut Signals,
    ) -> Result<Stop> {
        let deadline = until.duration.map(|d| tokio::time::Instant::now() + d);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        let mut stats = tokio::time::interval(self.stats_interval);
        stats.tick().await;
        let mut alerts = tokio::time::interval(ALERT_EVERY);
        let mut memory = tokio::time::interval(MEMORY_EVERY);
        let mut follow = tokio::time::interval(FOLLOW_EVERY);
        let following = self.follower.is_some() && self.follow_polls;
        let mut kernel_agg = tokio::time::interval(Duration::from_millis(inkernel::READ_EVERY_MS));
        let aggregating = self.aggregating.is_some();
        let started = Instant::now();
        let mut next_pid_check = started;
        let mut next_sites = started + ALLOC_SITES_EVERY;
        let has_rules = self.alerting.has_rules();
        loop {
            let sink_tick = self
                .sinks
                .next_tick()
                .unwrap_or_else(|| Instant::now() + NO_TICK);
            let py_next = self.probes.python_next();
            let step: Result<Option<Stop>> = tokio::select! {
                _ = async { tokio::time::sleep_until(py_next.unwrap()).await }, if py_next.is_some() => {
                    self.probes.python_toggle().map(|()| None).map_err(Into::into)
                }
                received = signals.recv() => match received.action {
                    OnSignal::Stop => Ok(Some(Stop::Signal(received.name))),
                    OnSignal::Reload => self.reload().map(|()| None),
                },
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => Ok(Some(Stop::Duration)),
                _ = drain.tick() => self.drain().map(|()| {
                    if Instant::now() < next_pid_check {
                        return None;
                    }
                    next_pid_check += PID_CHECK_EVERY;
                    self.exited(child.as_deref_mut()).filter(|_| !until.follow)
                }),
                _ = stats.tick() => self.stats().map(|()| None),
                _ = follow.tick(), if following => self.follow().map(|()| None),
                _ = kernel_agg.tick(), if aggregating => self.read_aggregates().map(|()| None),
                _ = alerts.tick(), if has_rules => self.evaluate_alerts().map(|()| None),
                _ = memory.tick() => self.sample_memory().and_then(|()| {
                    if self.probes.alloc.is_some() && Instant::now() >= next_sites {
                        next_sites += ALLOC_SITES_EVERY;
                        self.alloc_sites()?;
                    }
                    Ok(None)
                }),
                _ = tokio::time::sleep_until(sink_tick.into()) => {
                    self.sinks.tick(self.live.as_ref()).map(|()| None).map_err(Into::into)
                }
            };
            match step {
                Ok(Some(stop)) => return Ok(stop),
                Ok(None) => {}
                Err(e) if output_closed(&e) => return Ok(Stop::OutputClosed),
                Err(e) => return Err(e),
            }
        }
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
        let mut profiles = self.live.profiles();
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
                Ok(Event::Sample(s)) => {
                    if let Some(p) = profiles.as_mut() {
                        // A CPython process: from now on its Python frames.
                        if let Some(py) = self
                            .probes
                            .profile
                            .as_mut()
                            .and_then(|m| m.python_process(s.header.pid))
                        {
                            p.set_python(s.header.pid, py.names);
                        }
                        p.record(&s);
                    }
                }
                Err(_) => self.counts.decode_errors += 1,
            }
        }
        drop(metrics);
        if let Some(p) = profiles.as_mut() {
            // While the processes run: their mappings name the addresses.
            p.resolve_new();
        }
        drop(profiles);
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
        let mut events = self
            .alerting
            .evaluate(now, &current, || live.snapshot(Window::All));
        self.finish_captures();
        if events.is_empty() {
            return Ok(());
        }
        self.start_captures(&mut events, now);
        for event in &events {
            self.sinks.alert(event)?;
        }
        self.sinks.flush()?;
        self.alerting.run_hooks();
        self.live.set_alerts(self.alerting.active());
        Ok(())
    }

    /// Starts a profile capture for each alert on a stage that fired, and
    /// links it from the alert event.
    fn start_captures(&mut self, events: &mut [AlertEvent], now_wall: u64) {
        if self.alert_capture.is_none() || self.live.profiles().is_none() {
            return;
        }
        let frame = self.frame_stage.and_then(|id| {
            let m = self.live.metrics();
            m.stage_names().get(id as usize).cloned()
        });
        for event in events.iter_mut().filter(|e| e.state == AlertState::Firing) {
            let Ok(rule) = parse_rule(&event.rule) else {
                continue;
            };
            let stage = match rule.metric.stage() {
                Some(s) => Some(s.to_string()),
                None if rule.metric.subject().is_some() => frame.clone(),
                None => None,
            };
            let Some(stage) = stage else { continue };
            let id = self.live.alert_profiles_count() as u32 + self.captures.len() as u32 + 1;
            let path = alert_profile_path(id);
            self.alerting.link_profile(&event.rule, &path);
            event.profile = Some(path);
            self.captures.push(PendingCapture {
                id,
                rule: event.rule.clone(),
                stage,
                fired_mono: monotonic_ns(),
                fired_wall: now_wall,
            });
        }
    }

    /// Completes the captures whose time is up (or all of them, at the end).
    fn finish_captures_by(&mut self, all: bool) {
        let Some(capture) = self.alert_capture else {
            return;
        };
        let len = capture.as_nanos() as u64;
        let now = monotonic_ns();
        let (due, wait): (Vec<PendingCapture>, Vec<PendingCapture>) = self
            .captures
            .drain(..)
            .partition(|c| all || now >= c.fired_mono + len);
        self.captures = wait;
        for c in due {
            let query = |range| ProfileQuery {
                stage: Some(c.stage.clone()),
                range: Some(range),
                frame_ns: None,
            };
            let Some(store) = self.live.profiles() else {
                return;
            };
            let (Ok(before), Ok(after)) = (
                store.query(&query((c.fired_mono.saturating_sub(len), c.fired_mono))),
                store.query(&query((c.fired_mono, c.fired_mono + len))),
            ) else {
                continue;
            };
            drop(store);
            self.live.add_alert_profile(AlertCapture {
                id: c.id,
                rule: c.rule,
                stage: c.stage,
                fired_ns: c.fired_wall,
                capture_ns: len,
                before,
                after,
            });
        }
    }

    fn finish_captures(&mut self) {
        self.finish_captures_by(false);
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
        // Captures still running end with the run (shorter than asked).
        self.finish_captures_by(true);
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
            .enumerate()
            .map(|(i, (stage, latency))| StageTotal {
                stage,
                latency: *latency,
                aggregated: self.aggregating.as_ref().map(|a| a.counted(i)),
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
        // Never a panic on a closed stderr: the outputs are written.
        let _ = writeln!(
            std::io::stderr(),
            "{}adeline-trace: stopped ({}) after {:.1}s: {} events, {} dropped, {} unmatched returns",
            journal::prefix(Priority::Info),
            stop.describe(),
            elapsed.as_secs_f64(),
            self.counts.records,
            all_drops(&counters),
            counters[COUNTER_UNMATCHED_EXIT as usize],
        );
        for o in self.sinks.health() {
            let _ = writeln!(
                std::io::stderr(),
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
        if let (Some(maps), Some(store)) = (self.probes.profile.as_ref(), self.live.profiles()) {
            let t = store.totals();
            let c = maps.counters().unwrap_or_default();
            let _ = writeln!(
                std::io::stderr(),
                "adeline-trace: profile: {} on-CPU samples ({:.3} s), {} off-CPU intervals sampled of {} ({:.3} s blocked, {:.3} s runnable), {} lost (ring full)",
                t.on_cpu_samples,
                t.on_cpu_ns as f64 / 1e9,
                t.off_cpu_intervals,
                c.off_cpu_seen,
                t.off_cpu_ns as f64 / 1e9,
                t.runqueue_ns as f64 / 1e9,
                c.ring_full,
            );
            for (pid, what) in maps.python_processes() {
                let _ = writeln!(
                    std::io::stderr(),
                    "adeline-trace: profile: Python frames of pid {pid} ({what})"
                );
            }
            if c.py_no_tstate > 0 {
                let _ = writeln!(
                std::io::stderr(),
                    "adeline-trace: profile: {} samples of a CPython thread without a Python thread state (no Python frames)",
                    c.py_no_tstate
                );
            }
        }
        if self.counts.decode_errors > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "{}adeline-trace: {} records could not be decoded",
                journal::prefix(Priority::Warning),
                self.counts.decode_errors
            );
        }
        self.alerting.finish();
        let detached = self.probes.detach_uprobes();
        let _ = writeln!(
            std::io::stderr(),
            "{}adeline-trace: detached {} uprobes in {} ms (programs off after {} ms)",
            journal::prefix(Priority::Info),
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
