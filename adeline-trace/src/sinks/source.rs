//! What the agent's readers may ask of the running tracer: the HTTP API,
//! the dashboard, `/metrics`, the history endpoint, and the sinks that read
//! whole snapshots (history rows, `--summary-out`). The running agent
//! (state.rs) implements it; readers only see this trait, so they never
//! reach back upstream.
use std::{path::Path, sync::Arc};

use crate::{
    alerts::{AlertEvent, AlertState},
    metrics::{
        buckets::Cumulative,
        profile::{AlertCapture, ProfileQuery, Unnamed},
        snapshot::{Snapshot, Window},
    },
};

pub trait SnapshotSource: Send + Sync {
    /// The current snapshot over `window`.
    fn snapshot(&self, window: Window) -> Snapshot;
    /// Alerts currently firing, and the most recent transitions (newest last).
    fn alerts(&self) -> Vec<AlertEvent>;

    /// The history database this agent writes (`run --history FILE`);
    /// None when it keeps no history.
    fn history_db(&self) -> Option<&Path> {
        None
    }

    /// Whole-run per-stage and frame buckets for `GET /metrics`; None when
    /// this source keeps no whole-run histograms.
    fn cumulative(&self) -> Option<Cumulative> {
        None
    }

    /// The period since the previous call, tiling time exactly (one
    /// history row per stage), labelled `window`; None when this source
    /// tracks no periods or none has elapsed.
    fn take_period(&self, _window: Window) -> Option<Snapshot> {
        None
    }

    /// The profiler's samples `q` asks for, aggregated (named later, off
    /// the caller's locks); Ok(None) when the run does not profile; Err: a
    /// query naming no stage of the run.
    fn profile(&self, _q: &ProfileQuery) -> Result<Option<Unnamed>, String> {
        Ok(None)
    }

    /// Profiles captured when alerts fired, oldest first.
    fn alert_profiles(&self) -> Vec<Arc<AlertCapture>> {
        Vec::new()
    }

    /// Each known alert rule and whether it is firing, in first-seen order
    /// (by default: the rules of [`Self::alerts`], by their newest state).
    fn alert_states(&self) -> Vec<(String, bool)> {
        let mut states: Vec<(String, bool)> = Vec::new();
        for a in self.alerts() {
            let firing = a.state == AlertState::Firing;
            match states.iter_mut().find(|(rule, _)| *rule == a.rule) {
                Some(known) => known.1 = firing,
                None => states.push((a.rule, firing)),
            }
        }
        states
    }
}

/// Request text echoed in an HTTP error body is cut to this many characters.
pub const ECHO_CHARS: usize = 80;

/// The shared state every HTTP handler reads.
pub type Source = Arc<dyn SnapshotSource>;
