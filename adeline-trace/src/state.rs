//! What the agent's readers (the HTTP API) may ask of the running tracer.
//! The tracer implements it over its metrics and alerts; the API only sees
//! this trait, so sinks never reach back upstream.
use crate::{
    alerts::AlertEvent,
    metrics::snapshot::{Snapshot, Window},
};

pub trait SnapshotSource: Send + Sync {
    /// The current snapshot over `window`.
    fn snapshot(&self, window: Window) -> Snapshot;
    /// Alerts currently firing, and the most recent transitions (newest last).
    fn alerts(&self) -> Vec<AlertEvent>;
}
