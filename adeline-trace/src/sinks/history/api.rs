//! `GET /api/history?since=1h[&stage=S]`: the running agent's history rows
//! and alert transitions (docs/history.md), read from its database on a
//! blocking thread. Errors are JSON `{"error": "..."}` like the rest of the
//! API: 400 for a bad query, 404 when the agent keeps no history.
use std::path::Path;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use super::{
    now_ns, parse_since, since_ns, HistoryError, HistoryReader, HistoryReport, DEFAULT_SINCE,
};
use crate::{format, sinks::source::Source};

/// The endpoint, merged into the API router.
pub fn routes() -> Router<Source> {
    Router::new().route("/api/history", get(history))
}

/// Without a database the agent keeps no history.
pub const NO_HISTORY: &str = "this agent keeps no history: start it with --history FILE";

async fn history(
    State(source): State<Source>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let pairs = match query {
        Ok(Query(pairs)) => pairs,
        Err(rejection) => {
            let reason = one_line(&rejection.body_text());
            return failure(
                StatusCode::BAD_REQUEST,
                format!("malformed query string: {reason}"),
            );
        }
    };
    let mut since = DEFAULT_SINCE.to_string();
    let mut stage = None;
    for (key, value) in pairs {
        match key.as_str() {
            "since" => since = value,
            "stage" => stage = Some(value),
            _ => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown query parameter '{}': accepted: since, stage",
                        one_line(&key)
                    ),
                )
            }
        }
    }
    let since = match parse_since("since", &since) {
        Ok(d) => d,
        Err(e) => return failure(StatusCode::BAD_REQUEST, one_line(&e.to_string())),
    };
    let Some(path) = source.history_db().map(Path::to_path_buf) else {
        return failure(StatusCode::NOT_FOUND, NO_HISTORY.into());
    };
    let from = since_ns(now_ns(), since);
    let read = tokio::task::spawn_blocking(move || read(&path, stage.as_deref(), from)).await;
    match read {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => failure(StatusCode::INTERNAL_SERVER_ERROR, one_line(&e.to_string())),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the history failed: {e}"),
        ),
    }
}

/// The report; an agent whose database does not exist yet has no rows.
fn read(path: &Path, stage: Option<&str>, since_ns: u64) -> Result<HistoryReport, HistoryError> {
    match HistoryReader::open(path) {
        Ok(reader) => reader.report(stage, since_ns),
        Err(HistoryError::Missing { .. }) => Ok(HistoryReport::default()),
        Err(e) => Err(e),
    }
}

fn failure(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Text echoed in an error: one line, at most 200 characters.
fn one_line(s: &str) -> String {
    format::one_line(s, 200)
}
