//! The API's view of the running agent: snapshots and whole-run buckets
//! computed at most once per [`MAX_AGE`] each, whatever the request rate.
//!
//! Computing a snapshot locks the live metrics, which the tracer's drain
//! loop also locks for every batch of records. Without this cache every
//! request would take that lock, and a client looping on `/api/summary`
//! (or a hundred dashboards) could keep the drain loop waiting; with it the
//! API takes the lock at most 9 times per `MAX_AGE` (four windows, the
//! buckets, and the windows again after new buckets), for one computation
//! each, no matter how many clients ask.
use std::{
    path::Path,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    alerts::AlertEvent,
    metrics::{
        buckets::Cumulative,
        snapshot::{Snapshot, Window},
    },
    sinks::source::{SnapshotSource, Source},
};

/// How old a cached answer may be.
pub const MAX_AGE: Duration = Duration::from_millis(100);

/// A value and when it was computed.
type Cached<T> = Mutex<Option<(Instant, T)>>;

/// A [`SnapshotSource`] that reuses recent answers of another one.
pub struct CachedSource {
    inner: Source,
    /// One per [`Window::ALL`], in that order.
    snapshots: [Cached<Snapshot>; 4],
    cumulative: Cached<Option<Cumulative>>,
}

impl CachedSource {
    pub fn new(inner: Source) -> CachedSource {
        CachedSource {
            inner,
            snapshots: Default::default(),
            cumulative: Mutex::new(None),
        }
    }
}

/// The cached value of `slot` when it is fresh, else `compute()`'s (kept).
/// The slot stays locked while computing, so concurrent askers wait for
/// that one computation instead of starting their own.
fn fresh<T: Clone>(slot: &Cached<T>, compute: impl FnOnce() -> T) -> T {
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((at, value)) = slot.as_ref() {
        if at.elapsed() < MAX_AGE {
            return value.clone();
        }
    }
    let value = compute();
    *slot = Some((Instant::now(), value.clone()));
    value
}

impl SnapshotSource for CachedSource {
    fn snapshot(&self, window: Window) -> Snapshot {
        let i = Window::ALL
            .iter()
            .position(|&w| w == window)
            .unwrap_or_default();
        fresh(&self.snapshots[i], || self.inner.snapshot(window))
    }

    fn alerts(&self) -> Vec<AlertEvent> {
        self.inner.alerts()
    }

    fn history_db(&self) -> Option<&Path> {
        self.inner.history_db()
    }

    /// Fresh buckets drop the cached snapshots: `/metrics` reads the
    /// buckets first, and the snapshots' counters must not be older than
    /// the buckets' (prometheus/mod.rs).
    fn cumulative(&self) -> Option<Cumulative> {
        fresh(&self.cumulative, || {
            let buckets = self.inner.cumulative();
            for slot in &self.snapshots {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
            buckets
        })
    }

    // take_period is left at its default (None): periods belong to the
    // history sink, never to a reader.

    fn alert_states(&self) -> Vec<(String, bool)> {
        self.inner.alert_states()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sinks::api::fixtures::FakeSource;

    #[test]
    fn snapshots_are_computed_once_per_window_and_age() {
        let inner = Arc::new(FakeSource::default());
        let cached = CachedSource::new(inner.clone());
        for _ in 0..100 {
            for window in Window::ALL {
                assert_eq!(cached.snapshot(window).window, window);
            }
        }
        assert_eq!(inner.windows(), Window::ALL.to_vec());
        std::thread::sleep(MAX_AGE + Duration::from_millis(20));
        assert_eq!(cached.snapshot(Window::S1).window, Window::S1);
        assert_eq!(inner.windows().len(), 5);
    }
}
