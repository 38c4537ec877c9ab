//! What the agent's readers may ask of the running tracer: the HTTP API,
//! the dashboard, `/metrics`, the history endpoint, and the sinks that read
//! whole snapshots (history rows, `--summary-out`). The running agent
//! (state.rs) implements it; readers only see this trait, so they never
//! reach back upstream.
use std::{path::Path, sync::Arc};

use serde::Serialize;

use crate::{
    alerts::{AlertEvent, AlertState},
    container::ProcessInfo,
    metrics::{
        buckets::Cumulative,
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

    /// The processes traced now (pid namespace, cgroup, container, pod).
    fn processes(&self) -> Vec<ProcessInfo> {
        Vec::new()
    }

    /// What the outputs that send records elsewhere (OTLP) delivered and
    /// lost, as of the last stats interval.
    fn outputs(&self) -> Vec<OutputHealth> {
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

/// What an output that sends records elsewhere has delivered and lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutputHealth {
    /// `otlp_metrics`, `otlp_traces`.
    pub output: &'static str,
    /// Items delivered (metric data points, spans).
    pub exported: u64,
    /// Items lost: the queue was full, or every retry of their export failed.
    pub dropped: u64,
    /// Export requests that failed (each retried with backoff first).
    pub failed_exports: u64,
    /// Items waiting in the queue now.
    pub queued: u64,
}

/// Request text echoed in an HTTP error body is cut to this many characters.
pub const ECHO_CHARS: usize = 80;

/// The shared state every HTTP handler reads.
pub type Source = Arc<dyn SnapshotSource>;

/// Runs `read` over `source` on the runtime's blocking pool and waits for
/// it. A handler reads the source this way: computing a snapshot waits for
/// the tracer's locks, and waiting there never stalls the server's own
/// thread (accepting, timeouts, `/healthz`), and a request that waits too
/// long can still be answered by the request timeout.
pub async fn read_source<T: Send + 'static>(
    source: &Source,
    read: impl FnOnce(&dyn SnapshotSource) -> T + Send + 'static,
) -> T {
    let source = source.clone();
    match tokio::task::spawn_blocking(move || read(source.as_ref())).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime shuts down, which drops this
        // request too.
        Err(_) => std::future::pending().await,
    }
}
