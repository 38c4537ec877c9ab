//! The alert step of a run: the rules evaluated over the last second
//! against the baseline (from `--alert-baseline`, else learned from the
//! run's first minute), and their `exec` hooks.
use std::time::{Duration, Instant};

use super::{engine::AlertEngine, hook::HookRunner, AlertEvent};
use crate::metrics::snapshot::Snapshot;

/// Without `--alert-baseline`, the `baseline` of alert rules is the
/// whole-run snapshot taken this long after the start.
pub const BASELINE_AFTER: Duration = Duration::from_secs(60);

/// Rules, their baseline and the hooks they run.
#[derive(Debug)]
pub struct Alerting {
    engine: AlertEngine,
    hooks: HookRunner,
    baseline: Option<Snapshot>,
    /// When to learn the baseline if none was given.
    learn_at: Instant,
}

impl Alerting {
    /// `baseline` from `--alert-baseline`; None: learned after [`BASELINE_AFTER`].
    pub fn new(engine: AlertEngine, baseline: Option<Snapshot>) -> Alerting {
        Alerting {
            engine,
            hooks: HookRunner::new(),
            baseline,
            learn_at: Instant::now() + BASELINE_AFTER,
        }
    }

    /// Whether there is any rule to evaluate.
    pub fn has_rules(&self) -> bool {
        !self.engine.is_empty()
    }

    /// Evaluates the rules at wall-clock `now_ns` over `current` (the 1 s
    /// window); `whole_run` gives the baseline when it is time to learn
    /// it. Returns the transitions; their hooks start with [`Self::run_hooks`].
    pub fn evaluate(
        &mut self,
        now_ns: u64,
        current: &Snapshot,
        whole_run: impl FnOnce() -> Snapshot,
    ) -> Vec<AlertEvent> {
        if self.baseline.is_none() && Instant::now() >= self.learn_at {
            self.baseline = Some(whole_run());
        }
        self.engine
            .evaluate(now_ns, current, self.baseline.as_ref())
    }

    /// Starts the hooks of the last evaluation's transitions.
    pub fn run_hooks(&mut self) {
        for job in self.engine.take_hook_jobs() {
            self.hooks.run(&job);
        }
    }

    /// Links a profile to the firing alert of `rule` (see
    /// [`AlertEngine::link_profile`]).
    pub fn link_profile(&mut self, rule: &str, path: &str) {
        self.engine.link_profile(rule, path);
    }

    /// The alerts firing now.
    pub fn active(&self) -> Vec<AlertEvent> {
        self.engine.active()
    }

    /// Waits for the hooks still running (each up to its timeout).
    pub fn finish(&mut self) {
        self.hooks.finish();
    }
}
