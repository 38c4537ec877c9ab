//! The history sink: one row per stage per interval (a window the metrics
//! keep), with the alert transitions since the previous rows.
use std::time::{Duration, Instant};

use super::{HistoryError, HistorySpec, HistoryStore};
use crate::{
    alerts::AlertEvent,
    metrics::snapshot::Window,
    sinks::{
        sink::{Finish, Sink, SinkError, Start},
        source::SnapshotSource,
    },
};

/// Alert transitions kept for the store (it stores each once).
const RECENT_ALERTS: usize = 100;

pub struct HistorySink {
    store: HistoryStore,
    /// The window the rows are labelled with (the interval).
    window: Window,
    every: Duration,
    /// The next row is due (set when tracing starts).
    next: Option<Instant>,
    recent_alerts: Vec<AlertEvent>,
}

impl HistorySink {
    /// Opens (or creates) the database of `spec`.
    pub fn open(spec: &HistorySpec) -> Result<HistorySink, HistoryError> {
        let window = match spec.interval.as_secs() {
            1 => Window::S1,
            60 => Window::S60,
            _ => Window::S10,
        };
        Ok(HistorySink {
            store: HistoryStore::open(&spec.path, spec.retention)?,
            window,
            every: spec.interval,
            next: None,
            recent_alerts: Vec::new(),
        })
    }
}

impl Sink for HistorySink {
    fn start(&mut self, _: &Start<'_>) -> Result<(), SinkError> {
        self.next = Some(Instant::now() + self.every);
        Ok(())
    }

    fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        self.recent_alerts.push(event.clone());
        let excess = self.recent_alerts.len().saturating_sub(RECENT_ALERTS);
        self.recent_alerts.drain(..excess);
        Ok(())
    }

    fn next_tick(&self) -> Option<Instant> {
        self.next
    }

    /// One row per stage for the interval that just ended.
    fn tick(&mut self, source: &dyn SnapshotSource) -> Result<(), SinkError> {
        if let Some(next) = self.next.as_mut() {
            *next += self.every;
        }
        self.record_period(source)
    }

    /// The last, partial interval (from the last row to the end of the
    /// run; its `interval_ns` says how long it was), so a run's rows cover
    /// all of it.
    fn finish(&mut self, _: &Finish<'_>, source: &dyn SnapshotSource) -> Result<(), SinkError> {
        self.next = None;
        self.record_period(source)
    }
}

impl HistorySink {
    /// Rows for the period since the previous ones (none when no time passed).
    fn record_period(&mut self, source: &dyn SnapshotSource) -> Result<(), SinkError> {
        if let Some(snapshot) = source.take_period(self.window) {
            if snapshot.window_ns > 0 {
                self.store.record(&snapshot, &self.recent_alerts)?;
            }
        }
        Ok(())
    }
}
