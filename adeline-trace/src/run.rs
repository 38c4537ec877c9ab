//! `adeline-trace run`: Plan -> probes -> ring buffer -> events -> metrics ->
//! alerts -> sinks. This file sets everything up in order (so that every
//! user error is reported before anything is attached or launched) and
//! tears it down; tracer.rs is the loop in between.
use std::{
    fs::File,
    io::Write,
    os::fd::AsFd,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    alerts::engine::AlertEngine,
    config::{Output, Plan},
    events::{monotonic_ns, WallClock},
    launch::Launched,
    metrics::{
        snapshot::{Snapshot, Window},
        Metrics,
    },
    probes::{ProbeOptions, Probes},
    resolve::{resolve, ProbeSite},
    sinks::{
        api::serve,
        history::HistoryStore,
        jsonl::{JsonlSink, ProbeInfo, Record},
        trace_out::TraceOut,
    },
    state::{LiveOptions, LiveState},
    target::process,
    tracer::{Tracer, TracerParts, DRAIN_EVERY},
};

/// How long a launched command may take to exit after SIGTERM before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(2);

/// Runs the tracer until a signal, --duration, the launched command's exit,
/// or the exit of every --pid.
pub fn run(plan: Plan) -> Result<()> {
    let stage_names: Vec<String> = plan.stages.iter().map(|s| s.name.clone()).collect();
    let gauge_names: Vec<String> = plan.gauges.iter().map(|g| g.name.clone()).collect();
    let engine = AlertEngine::from_specs(
        &plan.alerts,
        &stage_names,
        &gauge_names,
        plan.frame_stage.is_some(),
    )?;
    let baseline = plan
        .alert_baseline
        .as_deref()
        .map(load_baseline)
        .transpose()?;
    let history = plan
        .history
        .as_ref()
        .map(|h| {
            let window = match h.interval.as_secs() {
                1 => Window::S1,
                60 => Window::S60,
                _ => Window::S10,
            };
            HistoryStore::open(&h.path, h.retention).map(|store| (store, window))
        })
        .transpose()?;
    for &pid in &plan.pids {
        process::ensure_running(pid)?;
    }
    let resolved = resolve(&plan.stages, &plan.gauges, &plan.pids)?;
    for w in &resolved.warnings {
        eprintln!("warning: {w}");
    }
    let mut sites = resolved.sites;
    let python = crate::python::resolve_plan(&plan, &plan.pids)?;
    for w in &python.warnings {
        eprintln!("warning: {w}");
    }
    sites.extend(python.sites.iter().cloned());
    if plan.alloc.is_some() {
        sites.extend(crate::alloc::sites::alloc_sites(&plan.pids)?);
    }
    crate::probes::check_privileges()?;
    let mut sink = JsonlSink::new(open_output(&plan.output)?);
    let trace_out = plan
        .trace_out
        .as_deref()
        .map(|p| {
            TraceOut::create(p, monotonic_ns())
                .with_context(|| format!("cannot create the trace file {}", p.display()))
        })
        .transpose()?;
    // Fork before any thread exists; the child waits until probes are attached.
    let mut child = match plan.command.is_empty() {
        true => None,
        false => Some(Launched::spawn(&plan.command)?),
    };
    let pids: Vec<u32> = match &child {
        Some(c) => vec![c.pid()],
        None => plan.pids.clone(),
    };
    let frame_stage = plan
        .frame_stage
        .as_ref()
        .and_then(|f| stage_names.iter().position(|s| s == f))
        .map(|i| i as u32);
    let opts = ProbeOptions {
        pids: pids.clone(),
        min_duration: plan.min_duration,
        ring_bytes: plan.ring_bytes,
        frame_stage,
        floor: plan.probe_floor,
        alloc: plan.alloc.clone(),
        memory: plan.memory,
        python: (!python.site_info.is_empty())
            .then(|| (python.site_info.clone(), python.patterns.clone())),
    };
    let probes = Probes::attach(&sites, &opts)?;
    if let Some(why) = &probes.memory_untraced {
        if !pids.is_empty() && plan.memory != crate::cli::MemoryMode::Off {
            eprintln!("warning: memory mappings are not traced: {why}");
        }
    }
    let clock = WallClock::new();
    let mut metrics = Metrics::new(stage_names, gauge_names, frame_stage);
    if history.is_some() {
        // History rows tile time exactly (the sliding windows do not).
        metrics.track_periods(monotonic_ns());
    }
    let live = Arc::new(LiveState::new(
        metrics,
        clock,
        LiveOptions {
            prom_buckets_ns: plan.prom_buckets_ns.clone(),
            history_db: plan.history.as_ref().map(|h| h.path.clone()),
            rules: plan.alerts.iter().map(|a| a.rule.clone()).collect(),
            alloc: plan.alloc.clone(),
        },
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = match &plan.api {
        Some(spec) => Some(runtime.block_on(serve(spec, live.clone(), async move {
            let _ = api_stopped.await;
        }))?),
        None => None,
    };
    write_start(&mut sink, &clock, &pids, &sites)?;
    eprintln!(
        "adeline-trace: {} probes on {} functions in {} stages; {}{}; Ctrl-C to stop",
        probes.attached(),
        sites.len(),
        plan.stages.len(),
        match (&child, pids.is_empty()) {
            (Some(c), _) => format!("tracing command pid {}", c.pid()),
            (None, true) => "tracing every process".to_string(),
            (None, false) => format!("tracing pids {pids:?}"),
        },
        match api.as_ref().and_then(|a| a.tcp_addr()) {
            Some(addr) => format!("; API on http://{addr}"),
            None => String::new(),
        }
    );
    if let Some(c) = child.as_mut() {
        c.release();
    }
    let mut tracer = Tracer::new(
        &plan,
        TracerParts {
            probes,
            sink,
            clock,
            live: live.clone(),
            engine,
            baseline,
            trace_out,
            frame_stage,
            history,
        },
    );
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
    // A last stats object, so the stream's totals include every call (and
    // every allocation and mapping: memory totals are read again first).
    tracer.refresh_memory()?;
    tracer.stats(&plan)?;
    tracer.alloc_sites()?;
    tracer.finish(started.elapsed(), stop, plan.summary_out.as_deref())?;
    let _ = api_stop.send(());
    if let Some(api) = api {
        runtime.block_on(api.join())?;
    }
    Ok(())
}

/// Reads the snapshot that `baseline` in alert rules refers to.
fn load_baseline(path: &std::path::Path) -> Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the alert baseline {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "alert baseline {} is not a summary snapshot (write one with run --summary-out)",
            path.display()
        )
    })
}

fn open_output(output: &Output) -> Result<Box<dyn Write + Send>> {
    Ok(match output {
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
    })
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
