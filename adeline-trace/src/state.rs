//! The running agent's shared state: the metrics the drain loop writes,
//! the alerts firing, the memory samplers and the run-wide counters. It is
//! the [`SnapshotSource`] the HTTP API and the snapshot-reading sinks see.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard, PoisonError,
};

use crate::{
    alerts::AlertEvent,
    container::{kubelet, ProcessInfo, ProcessTable},
    events::{monotonic_ns, WallClock},
    metrics::{
        buckets::Cumulative,
        memory::{stages::StageMemoryState, HostSampler, MemorySampler},
        profile::{AlertCapture, ProfileQuery, ProfileStore, Unnamed},
        snapshot::{AllocReport, HostStats, ProcessMemory, Snapshot, StageMemory, Window},
        Metrics,
    },
    sinks::{OutputHealth, SnapshotSource},
};

/// Settings of the running agent that readers need.
#[derive(Debug, Clone, Default)]
pub struct LiveOptions {
    /// Prometheus histogram bounds, increasing nanoseconds.
    pub prom_buckets_ns: Vec<u64>,
    /// The history database, when the run keeps one.
    pub history_db: Option<std::path::PathBuf>,
    /// Every configured alert rule, as written (so each is reported, 0
    /// until it fires).
    pub rules: Vec<String>,
    /// Alloc mode, when on.
    pub alloc: Option<crate::probes::alloc::AllocSpec>,
    /// The kubelet's pod log directory (pod namespaces and names); None:
    /// the default, /var/log/pods.
    pub kubelet_pods_dir: Option<std::path::PathBuf>,
}

/// The running tracer's shared state: metrics (written by the drain loop),
/// the alerts currently firing, and the run-wide counters.
pub struct LiveState {
    pub options: LiveOptions,
    metrics: Mutex<Metrics>,
    alerts: Mutex<Vec<AlertEvent>>,
    /// Every rule that has fired during the run, in first-fired order.
    fired_rules: Mutex<Vec<String>>,
    clock: WallClock,
    memory: Mutex<MemorySampler>,
    stage_memory: Mutex<StageMemoryState>,
    host: Mutex<HostSampler>,
    /// Every process seen, and the pids traced now (the given ones, or
    /// the ones sampled last).
    processes: Mutex<(ProcessTable, Vec<u32>)>,
    /// What the outputs that may lose records delivered and lost.
    outputs: Mutex<Vec<OutputHealth>>,
    events: AtomicU64,
    drops: AtomicU64,
    /// The profiler's samples (None without --profile).
    profiles: Option<Mutex<ProfileStore>>,
    alert_profiles: Mutex<Vec<Arc<AlertCapture>>>,
}

impl LiveState {
    pub fn new(metrics: Metrics, clock: WallClock, options: LiveOptions) -> LiveState {
        LiveState {
            metrics: Mutex::new(metrics),
            alerts: Mutex::new(Vec::new()),
            fired_rules: Mutex::new(Vec::new()),
            clock,
            memory: Mutex::new(MemorySampler::new()),
            stage_memory: Mutex::new(StageMemoryState::new(options.alloc.as_ref())),
            host: Mutex::new(HostSampler::new()),
            processes: Mutex::new((
                ProcessTable::new(
                    options
                        .kubelet_pods_dir
                        .clone()
                        .unwrap_or_else(|| kubelet::DEFAULT_PODS_DIR.into()),
                ),
                Vec::new(),
            )),
            outputs: Mutex::new(Vec::new()),
            events: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            profiles: None,
            alert_profiles: Mutex::new(Vec::new()),
            options,
        }
    }

    /// Keeps the profiler's samples in `store` (`run --profile`).
    pub fn with_profiles(mut self, store: ProfileStore) -> LiveState {
        self.profiles = Some(Mutex::new(store));
        self
    }

    /// The profiler's samples (the drain loop records into them).
    pub fn profiles(&self) -> Option<MutexGuard<'_, ProfileStore>> {
        self.profiles
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Keeps a profile captured for an alert.
    pub fn add_alert_profile(&self, capture: AlertCapture) {
        self.alert_profiles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(capture));
    }

    /// Alert profiles captured so far.
    pub fn alert_profiles_count(&self) -> usize {
        self.alert_profiles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Exclusive access to the metrics (the drain loop holds it per batch).
    pub fn metrics(&self) -> MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Samples the memory of `pids` from procfs, their CPU use and the
    /// host's (the run loop, ~1/s).
    /// `kernel_rss` gives the RSS from kmem:rss_stat when it has one.
    pub fn sample_memory(
        &self,
        pids: impl IntoIterator<Item = u32>,
        kernel_rss: &dyn Fn(u32) -> Option<u64>,
    ) {
        let pids: Vec<u32> = pids.into_iter().collect();
        self.set_processes(&pids);
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample(monotonic_ns(), pids.iter().copied(), kernel_rss);
        self.host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample(pids);
    }

    /// The processes traced now: `pids` (host pids).
    pub fn set_processes(&self, pids: &[u32]) {
        let mut p = self
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        p.0.lookup(pids);
        p.1 = pids.to_vec();
    }

    /// Reads what procfs says about `pid` now (its labels are kept for
    /// when it is traced).
    pub fn note_process(&self, pid: u32) {
        let mut p = self
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        p.0.lookup(&[pid]);
    }

    /// What is known of the processes traced now (pid namespace, cgroup,
    /// container, pod).
    pub fn traced_processes(&self) -> Vec<ProcessInfo> {
        let mut p = self
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (table, pids) = &mut *p;
        table.lookup(pids)
    }

    /// Per-stage memory state (resident bytes charged, alloc mode totals).
    pub fn stage_memory(&self) -> MutexGuard<'_, StageMemoryState> {
        self.stage_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the processes' and the stages' memory over `window` ending at
    /// `now` (mono ns) to a snapshot taken at `now`.
    fn fill_memory(&self, snapshot: &mut Snapshot, window: Window, now: u64) {
        snapshot.memory = self.memory_report(window, now);
        snapshot.host = self.host_report();
        snapshot.processes = self.traced_processes();
        let (names, frames) = self.names_and_frames();
        self.stage_memory()
            .fill(snapshot, window, now, &names, frames);
    }

    fn names_and_frames(&self) -> (Vec<String>, Option<u64>) {
        let m = self.metrics();
        (m.stage_names().to_vec(), m.frames_total())
    }

    /// The per-stage memory (mapped and resident bytes, with growth) and the alloc report
    /// over `window` ending at `now` (mono ns), for the `memory` object.
    pub fn stage_memory_report(
        &self,
        window: Window,
        now: u64,
    ) -> (Vec<StageMemory>, Option<AllocReport>) {
        let mut stages = self.metrics().stage_memory();
        let (names, frames) = self.names_and_frames();
        let state = self.stage_memory();
        state.fill_stages(&mut stages, &names, window, now);
        (stages, state.alloc_report(window, now, &names, frames))
    }

    /// Wall-clock nanoseconds for a monotonic timestamp.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        self.clock.wall_ns(mono_ns)
    }

    /// What the outputs that may lose records delivered and lost (each
    /// stats interval).
    pub fn set_outputs(&self, outputs: Vec<OutputHealth>) {
        *self.outputs.lock().unwrap_or_else(PoisonError::into_inner) = outputs;
    }

    /// Updates the run-wide record counters.
    pub fn set_counts(&self, events: u64, drops: u64) {
        self.events.store(events, Ordering::Relaxed);
        self.drops.store(drops, Ordering::Relaxed);
    }

    /// The traced processes' memory over `window` ending at `now` (mono
    /// ns), with their CPU use over the last sampling interval.
    pub fn memory_report(&self, window: Window, now: u64) -> Vec<ProcessMemory> {
        let mut report = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .report(window, now);
        let host = self.host.lock().unwrap_or_else(PoisonError::into_inner);
        for m in &mut report {
            m.cpu_percent = host.cpu_percent(m.pid);
        }
        report
    }

    /// The host's CPU, memory and GPUs over the last sampling interval.
    pub fn host_report(&self) -> Option<HostStats> {
        self.host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .report()
    }

    /// Replaces the list of alerts currently firing.
    pub fn set_alerts(&self, active: Vec<AlertEvent>) {
        let mut fired = self
            .fired_rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for a in &active {
            if !fired.contains(&a.rule) {
                fired.push(a.rule.clone());
            }
        }
        drop(fired);
        *self.alerts.lock().unwrap_or_else(PoisonError::into_inner) = active;
    }
}

impl SnapshotSource for LiveState {
    fn snapshot(&self, window: Window) -> Snapshot {
        let now = monotonic_ns();
        let mut snapshot = self.metrics().snapshot(
            window,
            now,
            self.clock.wall_ns(now),
            self.events.load(Ordering::Relaxed),
            self.drops.load(Ordering::Relaxed),
        );
        self.fill_memory(&mut snapshot, window, now);
        snapshot
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        self.traced_processes()
    }

    fn outputs(&self) -> Vec<OutputHealth> {
        self.outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn alerts(&self) -> Vec<AlertEvent> {
        self.alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The period since the previous call, tiling time exactly (for the
    /// history store; see [`Metrics::take_period`]), labelled `window`,
    /// with the processes' memory over that window.
    fn take_period(&self, window: Window) -> Option<Snapshot> {
        let now = monotonic_ns();
        let mut snapshot = self.metrics().take_period(
            window,
            now,
            self.clock.wall_ns(now),
            self.events.load(Ordering::Relaxed),
            self.drops.load(Ordering::Relaxed),
        )?;
        self.fill_memory(&mut snapshot, window, now);
        Some(snapshot)
    }

    fn history_db(&self) -> Option<&std::path::Path> {
        self.options.history_db.as_deref()
    }

    fn cumulative(&self) -> Option<Cumulative> {
        let bounds = &self.options.prom_buckets_ns;
        Some(self.metrics().cumulative_buckets(bounds))
    }

    fn profile(&self, q: &ProfileQuery) -> Result<Option<Unnamed>, String> {
        match self.profiles() {
            Some(store) => store.query(q).map(Some),
            None => Ok(None),
        }
    }

    fn alert_profiles(&self) -> Vec<Arc<AlertCapture>> {
        self.alert_profiles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every configured rule (then any other that fired), firing or not.
    fn alert_states(&self) -> Vec<(String, bool)> {
        let active = self.alerts();
        let fired = self
            .fired_rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut rules = self.options.rules.clone();
        rules.extend(
            fired
                .iter()
                .filter(|r| !self.options.rules.contains(r))
                .cloned(),
        );
        rules
            .into_iter()
            .map(|rule| {
                let firing = active.iter().any(|a| a.rule == rule);
                (rule, firing)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configured_rule_is_reported_before_it_fires() {
        let live = LiveState::new(
            Metrics::new(vec!["decode".into()], vec![], None),
            WallClock::new(),
            LiveOptions {
                rules: vec!["fps < 25".into(), "drops > 0".into()],
                ..Default::default()
            },
        );
        assert_eq!(
            live.alert_states(),
            vec![
                ("fps < 25".to_string(), false),
                ("drops > 0".to_string(), false)
            ]
        );
    }
}
