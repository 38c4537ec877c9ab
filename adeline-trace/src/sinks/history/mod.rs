//! History: an embedded SQLite store of one row per stage per interval,
//! with retention; `GET /api/history` and the `history` command read it.
use axum::Router;

use crate::sinks::api::routes::Source;

/// Routes served by this module (merged into the API router).
pub fn routes() -> Router<Source> {
    Router::new()
}
