//! The API's endpoints (docs/api.md): health, the snapshot, one stage, and
//! alerts, all read from a [`SnapshotSource`]. Every error is a 4xx with a
//! JSON body `{"error": "..."}` of one line.

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;

use super::limits::Limits;
use crate::{
    alerts::AlertEvent,
    format,
    metrics::snapshot::{Snapshot, StageStats, Window},
    sinks::source::{read_source, Source, ECHO_CHARS},
};

/// The window used when a request names none.
pub const DEFAULT_WINDOW: Window = Window::S10;

/// The router over `source`; `limits` bounds the dashboard's streams.
pub fn router(source: Source, limits: Limits) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/summary", get(summary))
        .route("/api/stages/{name}", get(stage))
        .route("/api/alerts", get(alerts))
        .merge(crate::sinks::prometheus::routes())
        .merge(crate::sinks::dashboard::routes(limits.max_streams))
        .merge(crate::sinks::history::api::routes())
        .fallback(not_found)
        // After the routes: it applies to the routes already added.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(source)
}

/// A client error: status and a one-line message, sent as `{"error": ...}`.
#[derive(Debug)]
pub struct ApiFailure {
    status: StatusCode,
    message: String,
}

impl ApiFailure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            message: message.into(),
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
}

/// `GET /healthz`: the agent is up.
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /api/summary?window=W`: the whole snapshot.
async fn summary(
    State(source): State<Source>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Snapshot>, ApiFailure> {
    let window = window_param(query)?;
    Ok(Json(
        read_source(&source, move |s| s.snapshot(window)).await,
    ))
}

/// `GET /api/stages/{name}?window=W`: one stage of the snapshot.
async fn stage(
    State(source): State<Source>,
    Path(name): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<StageStats>, ApiFailure> {
    let window = window_param(query)?;
    let snapshot = read_source(&source, move |s| s.snapshot(window)).await;
    if let Some(stats) = snapshot.stage(&name) {
        return Ok(Json(stats.clone()));
    }
    let known: Vec<&str> = snapshot.stages.iter().map(|s| s.stage.as_str()).collect();
    let known = if known.is_empty() {
        "there are none".to_string()
    } else {
        format!("the stages are {}", known.join(", "))
    };
    Err(ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!("no stage '{}': {known}", one_line(&name)),
    ))
}

/// The body of `GET /api/alerts`.
#[derive(Debug, Serialize)]
struct Alerts {
    alerts: Vec<AlertEvent>,
}

/// `GET /api/alerts`: firing alerts and recent transitions, newest last.
async fn alerts(
    State(source): State<Source>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Alerts>, ApiFailure> {
    let params = params(query)?;
    if let Some((key, _)) = params.first() {
        return Err(unknown_param(key, "none"));
    }
    Ok(Json(Alerts {
        alerts: read_source(&source, |s| s.alerts()).await,
    }))
}

async fn not_found(uri: Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {}: try /, /healthz, /api/summary, /api/stages/NAME, /api/alerts, /api/history or /metrics",
            one_line(uri.path())
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}: the API is read-only, use GET",
            one_line(method.as_str()),
            one_line(uri.path())
        ),
    )
}

/// The query's pairs, or a 400 if it cannot be decoded.
fn params(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiFailure> {
    match query {
        Ok(Query(pairs)) => Ok(pairs),
        Err(rejection) => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!(
                "malformed query string: {}",
                one_line(&rejection.body_text())
            ),
        )),
    }
}

/// The `window` parameter (the only one accepted), [`DEFAULT_WINDOW`] if absent.
fn window_param(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Window, ApiFailure> {
    let mut window = DEFAULT_WINDOW;
    for (key, value) in params(query)? {
        if key != "window" {
            return Err(unknown_param(&key, "window"));
        }
        window = Window::parse(&value).ok_or_else(|| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown window '{}': expected 1s, 10s, 60s or all",
                    one_line(&value)
                ),
            )
        })?;
    }
    Ok(window)
}

fn unknown_param(key: &str, accepted: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::BAD_REQUEST,
        format!(
            "unknown query parameter '{}': accepted: {accepted}",
            one_line(key)
        ),
    )
}

/// Request text echoed in an error, one short line.
fn one_line(s: &str) -> String {
    format::one_line(s, ECHO_CHARS)
}
