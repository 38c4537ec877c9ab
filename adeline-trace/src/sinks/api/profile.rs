//! The profiler's endpoints (docs/api.md):
//!
//! - `GET /api/profile?stage=S&seconds=N|all&format=folded|svg|pprof`: the
//!   profile of one stage (or of everything, without `stage`) over the last
//!   N seconds (default 10; `all`: the whole run);
//! - `GET /api/profile/alerts`: the profiles captured when alerts fired;
//! - `GET /api/alerts/{id}/profile?format=diff|svg|folded|pprof&part=after|before`:
//!   one of them: by default the differential flame graph (the capture
//!   after the alert against the same time before it).
//!
//! 404 when the run does not profile. Naming and rendering run on a
//! blocking thread (the first time a library is read it takes a while).
use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;

use super::routes::{one_line, params, unknown_param, ApiFailure};
use crate::{
    events::monotonic_ns,
    metrics::profile::{alert_profile_path, AlertCapture, ProfileQuery, Unnamed},
    sinks::{
        profile::{diff_svg, render, Format},
        source::Source,
    },
};

/// Default time range of `/api/profile`, seconds.
pub const DEFAULT_SECONDS: u64 = 10;

pub fn routes() -> Router<Source> {
    Router::new()
        .route("/api/profile", get(profile))
        .route("/api/profile/alerts", get(alert_list))
        .route("/api/alerts/{id}/profile", get(alert_profile))
}

fn not_profiling() -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "this agent does not profile: start it with run --profile HZ",
    )
}

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, message)
}

fn parse_format(value: &str, diff: bool) -> Result<Option<Format>, ApiFailure> {
    if diff && value == "diff" {
        return Ok(None);
    }
    Format::parse(value).map(Some).ok_or_else(|| {
        bad(format!(
            "unknown format '{}': expected {}folded, svg or pprof",
            one_line(value),
            if diff { "diff, " } else { "" }
        ))
    })
}

/// Renders off the async thread.
async fn rendered(
    format: Format,
    title: String,
    wall_start: u64,
    unnamed: Unnamed,
) -> Result<Response, ApiFailure> {
    let bytes = tokio::task::spawn_blocking(move || {
        let profile = unnamed.name();
        render(&profile, format, &title, wall_start)
    })
    .await
    .map_err(|e| ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(bytes_response(format.content_type(), bytes))
}

fn bytes_response(content_type: &'static str, bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /api/profile`.
async fn profile(
    State(source): State<Source>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let mut stage = None;
    let mut seconds = Some(DEFAULT_SECONDS);
    let mut format = Format::Folded;
    for (key, value) in params(query)? {
        match key.as_str() {
            "stage" => stage = Some(value),
            "seconds" if value == "all" => seconds = None,
            "seconds" => {
                seconds = Some(value.parse().ok().filter(|&n: &u64| n > 0).ok_or_else(|| {
                    bad(format!(
                        "invalid seconds '{}': a positive number of seconds, or all",
                        one_line(&value)
                    ))
                })?)
            }
            "format" => format = parse_format(&value, false)?.unwrap_or(Format::Folded),
            _ => return Err(unknown_param(&key, "stage, seconds, format")),
        }
    }
    let now = monotonic_ns();
    let range = seconds.map(|s| (now.saturating_sub(s * 1_000_000_000), now + 1));
    let q = ProfileQuery {
        stage: stage.clone(),
        range,
        frame_ns: None,
    };
    let unnamed = source
        .profile(&q)
        .map_err(|e| ApiFailure::new(StatusCode::NOT_FOUND, one_line(&e)))?
        .ok_or_else(not_profiling)?;
    let title = format!(
        "{} — {} (µs, on- and off-CPU)",
        stage.as_deref().unwrap_or("every stage"),
        match seconds {
            Some(s) => format!("last {s} s"),
            None => "whole run".to_string(),
        }
    );
    let wall_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let wall_start = wall_now.saturating_sub(seconds.unwrap_or(0) * 1_000_000_000);
    rendered(format, title, wall_start, unnamed).await
}

/// One alert profile in `/api/profile/alerts`.
#[derive(Debug, Serialize)]
struct AlertProfileInfo {
    id: u32,
    rule: String,
    stage: String,
    fired_ns: u64,
    capture_ns: u64,
    /// The differential flame graph.
    path: String,
}

#[derive(Debug, Serialize)]
struct AlertProfiles {
    profiles: Vec<AlertProfileInfo>,
}

/// `GET /api/profile/alerts`.
async fn alert_list(State(source): State<Source>) -> Result<Json<AlertProfiles>, ApiFailure> {
    if source
        .profile(&ProfileQuery::default())
        .ok()
        .flatten()
        .is_none()
    {
        return Err(not_profiling());
    }
    Ok(Json(AlertProfiles {
        profiles: source
            .alert_profiles()
            .iter()
            .map(|c| AlertProfileInfo {
                id: c.id,
                rule: c.rule.clone(),
                stage: c.stage.clone(),
                fired_ns: c.fired_ns,
                capture_ns: c.capture_ns,
                path: alert_profile_path(c.id),
            })
            .collect(),
    }))
}

/// `GET /api/alerts/{id}/profile`.
async fn alert_profile(
    State(source): State<Source>,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let mut format = None;
    let mut before = false;
    for (key, value) in params(query)? {
        match key.as_str() {
            "format" => format = parse_format(&value, true)?,
            "part" => {
                before = match value.as_str() {
                    "before" => true,
                    "after" => false,
                    _ => {
                        return Err(bad(format!(
                            "unknown part '{}': expected after or before",
                            one_line(&value)
                        )))
                    }
                }
            }
            _ => return Err(unknown_param(&key, "format, part")),
        }
    }
    let captures = source.alert_profiles();
    let found: Option<std::sync::Arc<AlertCapture>> = id
        .parse::<u32>()
        .ok()
        .and_then(|id| captures.iter().find(|c| c.id == id).cloned());
    let Some(capture) = found else {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!(
                "no alert profile '{}' (yet: a capture completes its time after the alert fired); see /api/profile/alerts",
                one_line(&id)
            ),
        ));
    };
    let secs = capture.capture_ns as f64 / 1e9;
    let title = format!(
        "{} — {} ({secs:.0} s after the alert)",
        capture.stage, capture.rule
    );
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<(Format, Vec<u8>)> {
        match format {
            None => {
                let (b, a) = (capture.before.name(), capture.after.name());
                let title = format!(
                    "{}: {secs:.0} s after the alert vs {secs:.0} s before — {}",
                    capture.stage, capture.rule
                );
                Ok((Format::Svg, diff_svg(&b, &a, &title)?))
            }
            Some(f) => {
                let part = if before {
                    &capture.before
                } else {
                    &capture.after
                };
                let start = if before {
                    capture.fired_ns.saturating_sub(capture.capture_ns)
                } else {
                    capture.fired_ns
                };
                Ok((f, render(&part.name(), f, &title, start)?))
            }
        }
    })
    .await
    .map_err(|e| ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(bytes_response(bytes.0.content_type(), bytes.1))
}
