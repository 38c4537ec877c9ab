//! `GET /api/stream`: the dashboard's push stream, Server-Sent Events. One
//! `update` event when the client connects and then one per [`PERIOD`],
//! each holding the 1 s and 10 s snapshots and the alerts
//! (docs/dashboard.md). The stream never ends by itself; the server drops
//! it at shutdown (after the API's grace period), and the browser's
//! `EventSource` reconnects after [`RETRY`].
//!
//! A stream holds one of the [`StreamSlots`] while it is open. An update
//! is made only when the server can send it (the stream is polled while
//! the connection's buffer has room) and missed ticks are skipped, so a
//! client that reads slowly gets fresh data and never a backlog; one that
//! stops reading is dropped by the server's stall timeout.
use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Extension, RawQuery, State},
    http::StatusCode,
    response::{
        sse::{Event, Sse},
        IntoResponse, Response,
    },
    Json,
};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::{
    alerts::AlertEvent,
    format::one_line,
    metrics::snapshot::{Snapshot, Window},
    sinks::source::{read_source, SnapshotSource, Source, ECHO_CHARS},
};

/// Where the stream is served.
pub const PATH: &str = "/api/stream";
/// Time between two updates.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long a disconnected browser waits before it reconnects (sent to it
/// in every event's `retry:` field).
pub const RETRY: Duration = Duration::from_secs(2);
/// Version of the update's JSON schema (the snapshots inside carry their own `v`).
pub const UPDATE_VERSION: u32 = 1;
/// SSE event type of an update.
pub const EVENT: &str = "update";

/// The data of one `update` event.
#[derive(Debug, Serialize)]
pub struct Update {
    /// Schema version ([`UPDATE_VERSION`]).
    pub v: u32,
    /// Wall-clock nanoseconds of the 1 s snapshot (also the event's `id:`).
    pub ts_ns: u64,
    pub snapshots: Snapshots,
    /// Firing alerts and the most recent transitions, newest last
    /// (the body of `GET /api/alerts`).
    pub alerts: Vec<AlertEvent>,
}

/// The snapshots of an update, keyed by window.
#[derive(Debug, Serialize)]
pub struct Snapshots {
    #[serde(rename = "1s")]
    pub s1: Snapshot,
    #[serde(rename = "10s")]
    pub s10: Snapshot,
}

impl Update {
    /// The current update from `source`.
    pub fn from_source(source: &dyn SnapshotSource) -> Update {
        let s1 = source.snapshot(Window::S1);
        let s10 = source.snapshot(Window::S10);
        Update {
            v: UPDATE_VERSION,
            ts_ns: s1.ts_ns,
            snapshots: Snapshots { s1, s10 },
            alerts: source.alerts(),
        }
    }

    fn into_event(self) -> Result<Event, axum::Error> {
        Event::default()
            .event(EVENT)
            .id(self.ts_ns.to_string())
            .retry(RETRY)
            .json_data(&self)
    }
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

/// The streams that may be open at once.
#[derive(Debug, Clone)]
pub struct StreamSlots {
    free: Arc<Semaphore>,
    max: usize,
}

impl StreamSlots {
    pub fn new(max: usize) -> StreamSlots {
        StreamSlots {
            free: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// `GET /api/stream`: `text/event-stream` of `update` events; `503` when
/// every stream slot is taken.
pub async fn stream(
    State(source): State<Source>,
    Extension(slots): Extension<StreamSlots>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let error = format!(
            "unknown query '{}': {PATH} takes no parameters",
            one_line(&query, ECHO_CHARS)
        );
        return (StatusCode::BAD_REQUEST, Json(ErrorBody { error })).into_response();
    }
    let Ok(slot) = slots.free.clone().try_acquire_owned() else {
        let error = format!(
            "the agent serves at most {} streams and they are all open; close a dashboard, \
             or try again later",
            slots.max
        );
        return (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error })).into_response();
    };
    let mut ticks = tokio::time::interval(PERIOD);
    // A client that reads slowly gets fresh data, not a backlog.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The slot is freed when the stream is dropped (its connection closed).
    let state = (source, ticks, slot);
    let events = futures_util::stream::unfold(state, |(source, mut ticks, slot)| async move {
        // The first tick completes at once: a new client is filled right away.
        ticks.tick().await;
        let event = read_source(&source, Update::from_source).await.into_event();
        Some((event, (source, ticks, slot)))
    });
    Sse::new(events).into_response()
}
