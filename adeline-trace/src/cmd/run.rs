//! `adeline-trace run`: Plan -> probes -> ring buffer -> events -> metrics ->
//! alerts -> sinks. This file sets everything up in order (so that every
//! user error is reported before anything is attached or launched) and
//! tears it down; tracer.rs is the loop in between.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    aggregating::Aggregating,
    alerts::{alerting::Alerting, engine::AlertEngine},
    config::Plan,
    container,
    events::{monotonic_ns, WallClock},
    journal::{self, Priority},
    launch::Launched,
    metrics::{snapshot::Snapshot, Metrics},
    probes::{
        check_privileges, memory::MemoryMode, resolve_plan, unwind, ProbeOptions, ProbePlan,
        ProbeSite, Probes,
    },
    sinks::{self, api::serve, OpenContext, PlacementInfo, ProbeInfo, Sink, Start},
    state::{LiveOptions, LiveState},
    symbols::process,
    tracer::{Tracer, Until, DRAIN_EVERY},
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
    // The kernel programs report host pids, and -p takes them.
    if !container::in_host_pid_namespace().unwrap_or(true) {
        anyhow::bail!(
            "adeline-trace runs in a pid namespace of its own, where procfs pids are not the host pids its probes report: run it in the host's (docker --pid=host, Kubernetes hostPID: true)"
        );
    }
    for &pid in &plan.pids {
        process::ensure_running(pid)?;
    }
    let resolved = resolve_plan(&ProbePlan {
        stages: &plan.stages,
        gauges: &plan.gauges,
        pids: &plan.pids,
        alloc: plan.alloc.as_ref(),
        max_probes: plan.max_probes,
        exit_probes: plan.exit_probes,
    })?;
    for w in &resolved.warnings {
        eprintln!("{}warning: {w}", journal::prefix(Priority::Warning));
    }
    let (sites, unwind_warnings) = (resolved.sites, resolved.unwind_warnings);
    check_privileges()?;
    let mut sinks = sinks::open(
        &plan.outputs,
        OpenContext {
            origin_ns: monotonic_ns(),
        },
    )?;
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
        alloc: plan.alloc.clone(),
        memory: plan.memory,
        attach: plan.attach,
        python: resolved.python.clone(),
        python_window: plan.python_window,
        aggregate_stages: match plan.aggregate_above {
            Some(_) => plan.stages.len() as u32,
            None => 0,
        },
    };
    let mut probes = Probes::attach(&sites, &opts)?;
    // Before the command runs: with --aggregate-above 0 no call is a record.
    let aggregating = match (plan.aggregate_above, probes.aggregation.as_mut()) {
        (Some(above), Some(maps)) => Some(Aggregating::new(
            maps,
            plan.stages.len(),
            above,
            frame_stage,
        )?),
        _ => None,
    };
    if let Some(why) = &probes.memory_untraced {
        if !pids.is_empty() && plan.memory != MemoryMode::Off {
            eprintln!(
                "{}warning: memory mappings are not traced: {why}",
                journal::prefix(Priority::Warning)
            );
        }
    }
    let mut metrics = Metrics::new(stage_names, gauge_names, frame_stage);
    if plan.outputs.history.is_some() {
        // History rows tile time exactly (the sliding windows do not).
        metrics.track_periods(monotonic_ns());
    }
    let live = Arc::new(LiveState::new(
        metrics,
        WallClock::new(),
        LiveOptions {
            prom_buckets_ns: plan.prom_buckets_ns.clone(),
            history_db: plan.outputs.history.as_ref().map(|h| h.path.clone()),
            rules: plan.alerts.iter().map(|a| a.rule.clone()).collect(),
            alloc: plan.alloc.clone(),
            kubelet_pods_dir: plan.kubelet_pods_dir.clone(),
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
    live.set_processes(&pids);
    sinks.start(&Start {
        ts_ns: live.wall_ns(monotonic_ns()),
        pids: &pids,
        processes: &live.traced_processes(),
        probes: &probe_infos(
            sites
                .iter()
                .filter(|s| !unwind::is_exit(s) && !unwind::is_hook(s)),
        ),
        exits: &probe_infos(sites.iter().filter(|s| unwind::is_exit(s))),
        unwind: &probe_infos(sites.iter().filter(|s| unwind::is_hook(s))),
        unwind_warnings: &unwind_warnings,
    })?;
    let (mode, attach_time) = probes.attach_mode();
    eprintln!(
        "{}adeline-trace: {} probes on {} functions in {} stages ({mode}, attached in {} ms); {}{}; Ctrl-C to stop",
        journal::prefix(Priority::Info),
        probes.attached(),
        // Functions: the exit-instruction and unwind hooks are not counted.
        sites
            .iter()
            .filter(|s| !unwind::is_exit(s) && !unwind::is_hook(s))
            .count(),
        plan.stages.len(),
        attach_time.as_millis(),
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
        probes,
        live.clone(),
        sinks,
        Alerting::new(engine, baseline),
        pids,
        plan.stats_interval,
        frame_stage,
    )
    .with_aggregating(aggregating);
    let started = Instant::now();
    let until = Until {
        duration: plan.duration,
    };
    let stop = runtime.block_on(tracer.trace(until, child.as_mut()))?;
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
            eprintln!(
                "{}adeline-trace: command exited with status {code}",
                journal::prefix(Priority::Info)
            );
        }
    }
    tracer.drain()?;
    tracer.read_aggregates()?;
    // A last stats object, so the stream's totals include every call (and
    // every allocation and mapping: memory totals are read again first).
    tracer.refresh_memory()?;
    tracer.stats()?;
    tracer.alloc_sites()?;
    tracer.finish(started.elapsed(), stop)?;
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

/// The `start` record's list: one entry per function attached.
fn probe_infos<'a>(sites: impl Iterator<Item = &'a ProbeSite>) -> Vec<ProbeInfo> {
    sites
        .map(|s| ProbeInfo {
            stage: s.stage.clone(),
            target: s.path.display().to_string(),
            symbol: s.symbol.clone(),
            offset: s.offset,
            placement: PlacementInfo {
                offset: s.placement.offset,
                address: s.probe_offset(),
                insn: s.placement.insn.clone(),
                emulated: s.placement.emulated,
                reason: s.placement.reason.to_string(),
            },
        })
        .collect()
}
