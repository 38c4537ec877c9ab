//! The live web dashboard (docs/dashboard.md): a single page served at `/`,
//! its script and style sheet (embedded in the binary: nothing is loaded
//! from elsewhere), and the push stream that feeds it, `GET /api/stream`
//! (Server-Sent Events, see [`stream`]).
use axum::{
    http::{header, HeaderName, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Extension, Router,
};

use crate::sinks::source::Source;

pub mod stream;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/dashboard.js");
const APP_CSS: &str = include_str!("assets/dashboard.css");

/// Path of the page's script.
pub const SCRIPT_PATH: &str = "/dashboard/dashboard.js";
/// Path of the page's style sheet.
pub const STYLE_PATH: &str = "/dashboard/dashboard.css";

/// Everything comes from this agent; no inline script, no other origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Routes served by this module (merged into the API router); at most
/// `max_streams` `/api/stream` streams at once.
pub fn routes(max_streams: usize) -> Router<Source> {
    Router::new()
        .route(stream::PATH, get(stream::stream))
        .layer(Extension(stream::StreamSlots::new(max_streams)))
        .route("/", get(index))
        .route(SCRIPT_PATH, get(script))
        .route(STYLE_PATH, get(style))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// An embedded asset. `no-cache`: the browser revalidates, so a page left
/// open across an agent upgrade picks up the new assets on reload.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests;
