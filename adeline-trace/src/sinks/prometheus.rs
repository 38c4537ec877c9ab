//! `GET /metrics`: Prometheus text exposition of the agent's metrics.
use axum::Router;

use crate::sinks::api::routes::Source;

/// Routes served by this module (merged into the API router).
pub fn routes() -> Router<Source> {
    Router::new()
}
