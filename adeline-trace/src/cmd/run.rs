//! `adeline-trace run`: Plan -> probes -> ring buffer -> events -> metrics ->
//! alerts -> sinks. This file sets everything up in order (so that every
//! user error is reported before anything is attached or launched) and
//! tears it down; tracer.rs is the loop in between.
use std::{
    io::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    aggregating::{self, Aggregating},
    alerts::{alerting::Alerting, engine::AlertEngine},
    cli::RunArgs,
    config::Plan,
    container,
    events::{monotonic_ns, WallClock},
    follow::{restart::Restarts, ConfigSource, Follower},
    journal::{self, Priority},
    launch::Launched,
    metrics::{profile::ProfileStore, snapshot::Snapshot, Metrics},
    probes::{
        check_privileges,
        memory::{MemoryMode, RssHook},
        resolve_plan, unwind, ProbeOptions, ProbePlan, ProbeSite, Probes,
    },
    signals::Signals,
    sinks::{
        self, api::ApiThread, AttachReason, OpenContext, PlacementInfo, ProbeInfo, Sink, Start,
    },
    state::{LiveOptions, LiveState},
    symbols::process,
    tracer::{Tracer, Until, DRAIN_EVERY},
};

/// How long a launched command may take to exit after SIGTERM before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(2);

/// Runs the tracer until a signal, --duration, the launched command's exit,
/// or the exit of every --pid.
pub fn run(plan: Plan, args: &RunArgs) -> Result<()> {
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
        ensure_user_process(pid)?;
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
    // The signals are handled from here on (signals.rs): after the fork,
    // so the held child keeps the default actions; before attaching, so one
    // that arrives while the probes are attached ends the run as it starts.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut signals = {
        let _inside = runtime.enter();
        Signals::install(plan.config.is_some()).context("installing the signal handlers")?
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
        profile: plan.profile.clone(),
        // Alloc mode's allocator probes would trap in every process on the
        // host while following: it traces the given processes only.
        follow_children: plan.follow_children
            && plan.alloc.is_none()
            && (child.is_some() || plan.follow),
        attach: plan.attach,
        python: resolved.python.clone(),
        python_window: plan.python_window,
        usdt_args: resolved.usdt_args.clone(),
        // With a config, room for the stages a reload adds.
        aggregate_stages: match plan.aggregate_above {
            Some(_) => aggregating::capacity(plan.stages.len(), plan.config.is_some()),
            None => 0,
        },
    };
    let mut probes = Probes::attach(&sites, &opts)?;
    // Before the command runs: with --aggregate-above 0 no call is a record.
    let aggregating = match (plan.aggregate_above, probes.aggregation.as_mut()) {
        (Some(above), Some(maps)) => Some(Aggregating::new(
            maps,
            plan.stages.len(),
            opts.aggregate_stages,
            above,
            frame_stage,
        )?),
        _ => None,
    };
    // Probes for every process: follow the target files; service mode:
    // reload stages on SIGHUP (docs/follow.md).
    let mut follower =
        (pids.is_empty() || opts.follow_children || plan.config.is_some()).then(|| {
            Follower::new(
                plan.stages.clone(),
                plan.gauges.clone(),
                plan.pids.clone(),
                &sites,
                plan.exit_probes,
                !pids.is_empty(),
            )
        });
    if let Some(f) = follower.as_mut().filter(|_| plan.follow) {
        let targets = f.target_paths();
        f.follow_restarts(Restarts::new(&plan.pids, &plan.command, &targets));
    }
    if let Some(why) = &probes.memory.fallback {
        let _ = writeln!(
            std::io::stderr(),
            "{}warning: memory: tp_btf/rss_stat not used ({}); kmem:rss_stat instead",
            journal::prefix(Priority::Warning),
            // A verifier log: its first line says why.
            why.lines().next().unwrap_or_default()
        );
    }
    if let Some(why) = &probes.memory_untraced {
        if !pids.is_empty() && plan.memory != MemoryMode::Off {
            let _ = writeln!(
                std::io::stderr(),
                "{}warning: memory mappings are not traced: {why}",
                journal::prefix(Priority::Warning)
            );
        }
    }
    let profile_store = plan
        .profile
        .as_ref()
        .map(|p| ProfileStore::new(p.period_ns(), stage_names.clone()));
    let mut metrics = Metrics::new(stage_names, gauge_names, frame_stage);
    if plan.outputs.history.is_some() {
        // History rows tile time exactly (the sliding windows do not).
        metrics.track_periods(monotonic_ns());
    }
    let live = LiveState::new(
        metrics,
        WallClock::new(),
        LiveOptions {
            prom_buckets_ns: plan.prom_buckets_ns.clone(),
            history_db: plan.outputs.history.as_ref().map(|h| h.path.clone()),
            rules: plan.alerts.iter().map(|a| a.rule.clone()).collect(),
            alloc: plan.alloc.clone(),
            kubelet_pods_dir: plan.kubelet_pods_dir.clone(),
        },
    );
    let live = Arc::new(match profile_store {
        Some(store) => live.with_profiles(store),
        None => live,
    });
    // On a thread of its own: no request can delay the loop below.
    let api = match &plan.api {
        Some(spec) => Some(ApiThread::start(spec, live.clone())?),
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
        rss_hook: probes.memory.rss_hook.map(RssHook::name),
    })?;
    let (mode, attach_time) = probes.attach_mode();
    let _ = writeln!(
        std::io::stderr(),
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
    let polls = pids.is_empty() || opts.follow_children || plan.follow;
    let started_files = follower
        .as_ref()
        .filter(|_| polls)
        .map(|f| f.attached(AttachReason::Start, &sites, &probes))
        .unwrap_or_default();
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
    .with_alert_profiles(plan.alert_profile.unwrap_or_default())
    .with_aggregating(aggregating);
    for attach in started_files {
        tracer.attached(attach)?;
    }
    if let Some(f) = follower {
        tracer.set_follower(f, polls);
    }
    if let Some(path) = &plan.config {
        tracer.set_config(path.display().to_string(), config_source(&plan, args));
    }
    let started = Instant::now();
    let until = Until {
        duration: plan.duration,
        follow: plan.follow,
    };
    let stop = runtime.block_on(tracer.trace(until, child.as_mut(), &mut signals))?;
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
            let _ = writeln!(
                std::io::stderr(),
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
    if let Some(api) = api {
        api.stop()?;
    }
    Ok(())
}

/// Service mode: re-reads the config with the same flags. Only the stages
/// change while tracing; other changed settings are named in a warning.
fn config_source(plan: &Plan, args: &RunArgs) -> ConfigSource {
    let (running, args) = (plan.clone(), args.clone());
    Box::new(move || {
        let new = Plan::from_args(&args).map_err(|e| e.to_string())?;
        let mut same_but_stages = running.clone();
        same_but_stages.stages = new.stages.clone();
        same_but_stages.frame_stage = new.frame_stage.clone();
        let warnings = match same_but_stages == new && running.frame_stage == new.frame_stage {
            true => Vec::new(),
            false => vec![
                "a reload applies [[stage]] changes only: the other settings changed in the config take effect at the next start".to_string(),
            ],
        };
        Ok((new.stages, warnings))
    })
}

/// `PF_KTHREAD` of a task's flags (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Refuses a kernel thread (`-p 2`): it runs no user code, so no probe
/// could ever fire in it. (A process check that belongs with
/// `symbols::process::ensure_running`; kept here while symbols/ is being
/// reworked elsewhere.)
fn ensure_user_process(pid: u32) -> Result<()> {
    // Unreadable: ensure_running has just said what is wrong, or the
    // process is gone and the run reports it.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Ok(());
    };
    match kernel_thread(&stat) {
        Some(comm) => anyhow::bail!(
            "pid {pid} ({comm}) is a kernel thread: kernel threads run no user code, so there \
             is nothing to trace; pass the pid of a user process"
        ),
        None => Ok(()),
    }
}

/// The name of the task of a `/proc/PID/stat` line if it is a kernel thread.
fn kernel_thread(stat: &str) -> Option<&str> {
    let (head, after_comm) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    // After the name: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags: u64 = after_comm.split_whitespace().nth(6)?.parse().ok()?;
    (flags & PF_KTHREAD != 0).then_some(comm)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_threads_are_told_apart_from_processes() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 3 0 0 20 0 1 0 30";
        assert_eq!(kernel_thread(kthreadd), Some("kthreadd"));
        let user = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 439 0 0 0";
        assert_eq!(kernel_thread(user), None);
        assert_eq!(kernel_thread("garbage"), None);
        // kthreadd is pid 2 (outside a pid namespace), and this test is a
        // user process.
        if std::fs::read_to_string("/proc/2/stat").is_ok_and(|s| s.starts_with("2 (kthreadd)")) {
            let e = ensure_user_process(2).unwrap_err().to_string();
            assert_eq!(
                e,
                "pid 2 (kthreadd) is a kernel thread: kernel threads run no user code, so there \
                 is nothing to trace; pass the pid of a user process"
            );
        }
        ensure_user_process(std::process::id()).unwrap();
    }
}
