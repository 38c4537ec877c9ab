//! `adeline-trace run`: Plan -> probes -> ring buffer -> events -> metrics -> sinks.
use std::{
    fs::File,
    io::Write,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use adeline_trace_common::{
    COUNTERS, COUNTER_DEPTH_OVERFLOW, COUNTER_FILTERED_SHORT, COUNTER_RING_FULL,
    COUNTER_UNMATCHED_EXIT,
};
use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    config::{Output, Plan},
    events::{decode, monotonic_ns, Event, WallClock},
    launch::Launched,
    metrics::Metrics,
    probes::{ProbeOptions, Probes},
    resolve::{resolve, ProbeSite},
    sinks::{
        jsonl::{JsonlSink, ProbeInfo, Record, StageSummary},
        table::{live_table, summary_table},
    },
    target::process,
};

/// How often the ring buffer is drained (records are submitted without wakeup).
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How long a launched command may take to exit after SIGTERM before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(2);
/// How often traced pids are checked for exit.
const PID_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Runs the tracer until a signal, --duration, the launched command's exit,
/// or the exit of every --pid.
pub fn run(plan: Plan) -> Result<()> {
    for &pid in &plan.pids {
        process::ensure_running(pid)?;
    }
    let resolved = resolve(&plan.stages, &plan.gauges, &plan.pids)?;
    for w in &resolved.warnings {
        eprintln!("warning: {w}");
    }
    let sites = resolved.sites;
    crate::probes::check_privileges()?;
    let out: Box<dyn Write + Send> = match &plan.output {
        // Unbuffered: JsonlSink buffers and writes whole lines itself.
        Output::Stdout => Box::new(File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating stdout")?,
        )),
        Output::File(path) => Box::new(
            File::create(path)
                .with_context(|| format!("cannot create output {}", path.display()))?,
        ),
    };
    let mut sink = JsonlSink::new(out);
    // Fork before any thread exists; the child waits until probes are attached.
    let mut child = match plan.command.is_empty() {
        true => None,
        false => Some(Launched::spawn(&plan.command)?),
    };
    let pids: Vec<u32> = match &child {
        Some(c) => vec![c.pid()],
        None => plan.pids.clone(),
    };
    let opts = ProbeOptions {
        pids: pids.clone(),
        min_duration: plan.min_duration,
        ring_bytes: plan.ring_bytes,
        frame_stage: plan
            .frame_stage
            .as_ref()
            .and_then(|f| plan.stages.iter().position(|s| &s.name == f))
            .map(|i| i as u32),
        floor: plan.probe_floor,
    };
    let probes = Probes::attach(&sites, &opts)?;
    let clock = WallClock::new();
    write_start(&mut sink, &clock, &pids, &sites)?;
    eprintln!(
        "adeline-trace: {} probes on {} functions in {} stages; {}; Ctrl-C to stop",
        probes.attached(),
        sites.len(),
        plan.stages.len(),
        match (&child, pids.is_empty()) {
            (Some(c), _) => format!("tracing command pid {}", c.pid()),
            (None, true) => "tracing every process".to_string(),
            (None, false) => format!("tracing pids {pids:?}"),
        }
    );
    if let Some(c) = child.as_mut() {
        c.release();
    }
    let names = plan.stages.iter().map(|s| s.name.clone()).collect();
    let mut tracer = Tracer {
        probes,
        sink,
        clock,
        metrics: Metrics::new(names),
        last_counters: [0; COUNTERS as usize],
        gauge_names: plan.gauges.iter().map(|g| g.name.clone()).collect(),
        write_spans: plan.spans,
        records: 0,
        last_records: 0,
        decode_errors: 0,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    let stop = runtime.block_on(tracer.trace(&plan, &pids, child.as_mut()))?;
    // A launched command is ended first (it finishes its current call), so
    // the final drain sees every call it made.
    if let Some(c) = child.as_mut() {
        c.request_stop();
        let deadline = Instant::now() + CHILD_GRACE;
        while c.try_wait().is_none() && Instant::now() < deadline {
            tracer.drain()?;
            std::thread::sleep(DRAIN_EVERY / 2);
        }
        if let Some(code) = c.terminate(Duration::ZERO) {
            eprintln!("adeline-trace: command exited with status {code}");
        }
    }
    tracer.drain()?;
    tracer.finish(started.elapsed(), stop)
}

fn write_start(
    sink: &mut JsonlSink,
    clock: &WallClock,
    pids: &[u32],
    sites: &[ProbeSite],
) -> Result<()> {
    let probes = sites
        .iter()
        .map(|s| ProbeInfo {
            stage: &s.stage,
            target: s.path.display().to_string(),
            symbol: &s.symbol,
            offset: s.offset,
        })
        .collect();
    sink.write(&Record::Start {
        ts_ns: clock.wall_ns(monotonic_ns()),
        pids,
        probes,
    })?;
    sink.flush()?;
    Ok(())
}

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal,
    Duration,
    CommandExited,
    PidsExited,
}

struct Tracer {
    probes: Probes,
    sink: JsonlSink,
    clock: WallClock,
    metrics: Metrics,
    last_counters: [u64; COUNTERS as usize],
    gauge_names: Vec<String>,
    write_spans: bool,
    /// Records read from the ring buffer (delivered events).
    records: u64,
    last_records: u64,
    decode_errors: u64,
}

impl Tracer {
    async fn trace(
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
        let mut pid_check = tokio::time::interval(PID_CHECK_EVERY);
        let stop = loop {
            tokio::select! {
                _ = sigint.recv() => break Stop::Signal,
                _ = sigterm.recv() => break Stop::Signal,
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break Stop::Duration,
                _ = drain.tick() => self.drain()?,
                _ = stats.tick() => self.stats(plan)?,
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
    fn drain(&mut self) -> Result<()> {
        let mut wrote = false;
        while let Some(item) = self.probes.ring.next() {
            self.records += 1;
            match decode(&item) {
                Ok(Event::Span(span)) => {
                    self.metrics.record_span(&span);
                    if !self.write_spans {
                        continue;
                    }
                    if let Some(stage) = self.metrics.stage_name(span.stage) {
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
                        })?;
                        wrote = true;
                    }
                }
                Ok(Event::Gauge(g)) => {
                    if let Some(gauge) = self.gauge_names.get(g.gauge as usize) {
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
                Err(_) => self.decode_errors += 1,
            }
        }
        if wrote {
            self.sink.flush()?;
        }
        Ok(())
    }

    fn stats(&mut self, plan: &Plan) -> Result<()> {
        let now = self.probes.counters()?;
        let delta = |i: u32| now[i as usize] - self.last_counters[i as usize];
        let (events, drops) = (self.records - self.last_records, delta(COUNTER_RING_FULL));
        self.sink.write(&Record::Stats {
            ts_ns: self.clock.wall_ns(monotonic_ns()),
            interval_ns: plan.stats_interval.as_nanos() as u64,
            events,
            drops,
            events_total: self.records,
            drops_total: now[COUNTER_RING_FULL as usize],
            unmatched_total: now[COUNTER_UNMATCHED_EXIT as usize],
            depth_overflow_total: now[COUNTER_DEPTH_OVERFLOW as usize],
            filtered_total: now[COUNTER_FILTERED_SHORT as usize],
        })?;
        self.sink.flush()?;
        self.last_counters = now;
        self.last_records = self.records;
        let interval = self.metrics.take_interval();
        if plan.live {
            let table = live_table(&interval, plan.stats_interval.as_secs_f64(), drops);
            eprintln!("{table}");
        }
        Ok(())
    }

    fn finish(mut self, elapsed: Duration, stop: Stop) -> Result<()> {
        let counters = self.probes.counters()?;
        let totals = self.metrics.totals();
        let stages = totals
            .iter()
            .map(|&(stage, latency)| StageSummary { stage, latency })
            .collect();
        self.sink.write(&Record::Summary {
            ts_ns: self.clock.wall_ns(monotonic_ns()),
            duration_ns: elapsed.as_nanos() as u64,
            events: self.records,
            drops: counters[COUNTER_RING_FULL as usize],
            stages,
        })?;
        self.sink.flush()?;
        eprint!("{}", summary_table(&totals));
        let drops = counters[COUNTER_RING_FULL as usize];
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
            drops,
            counters[COUNTER_UNMATCHED_EXIT as usize],
        );
        if self.decode_errors > 0 {
            eprintln!(
                "adeline-trace: {} records could not be decoded",
                self.decode_errors
            );
        }
        Ok(())
    }
}
