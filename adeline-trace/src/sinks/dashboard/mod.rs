//! The live web dashboard: a single page served at `/` with its assets,
//! updated by a push stream.
use axum::Router;

use crate::sinks::api::routes::Source;

/// Routes served by this module (merged into the API router).
pub fn routes() -> Router<Source> {
    Router::new()
}
