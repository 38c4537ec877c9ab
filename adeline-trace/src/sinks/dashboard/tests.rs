use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::sinks::api::{fixtures::FakeSource, routes::router};

/// Serves the whole API router over a [`FakeSource`] on an ephemeral port.
async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(
        Arc::new(FakeSource::default()),
        crate::sinks::api::Limits::DEFAULT,
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends `GET path` and returns the connection.
async fn send_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    conn
}

/// Reads until `done(text so far)` holds; panics after `timeout`.
async fn read_until(
    conn: &mut TcpStream,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if done(&text) {
                return text;
            }
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early: {text}");
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .expect("no answer in time")
}

/// `GET path` to its end: (head, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut conn = send_get(addr, path).await;
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn page_and_assets_are_served_from_the_binary() {
    let addr = start().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        (SCRIPT_PATH, "text/javascript; charset=utf-8"),
        (STYLE_PATH, "text/css; charset=utf-8"),
    ] {
        let (head, body) = get(addr, path).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains(&format!("content-type: {content_type}")),
            "{path}: {head}"
        );
        assert!(head.contains("content-security-policy: default-src 'none'"));
        assert!(head.contains("cache-control: no-cache"));
        assert!(!body.is_empty());
    }
    let (_, page) = get(addr, "/").await;
    assert!(page.contains(&format!("src=\"{SCRIPT_PATH}\"")), "{page}");
    assert!(page.contains(&format!("href=\"{STYLE_PATH}\"")), "{page}");
    assert!(page.contains("id=\"memory-rss\""), "{page}");
    assert!(page.contains("id=\"memory-growth\""), "{page}");
    assert!(!page.contains("not collected"), "{page}");
}

#[test]
fn assets_load_nothing_from_elsewhere() {
    for (name, text) in [
        ("index.html", INDEX_HTML),
        ("dashboard.js", APP_JS),
        ("dashboard.css", APP_CSS),
    ] {
        for needle in ["http://", "https://", "//cdn", "@import"] {
            assert!(!text.contains(needle), "{name} contains {needle}");
        }
    }
    // The CSP forbids inline script: every <script> has a src.
    assert_eq!(
        INDEX_HTML.matches("<script").count(),
        INDEX_HTML.matches("<script src=").count()
    );
}

/// The JSON of each `update` event in an SSE text.
fn updates(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut is_update = false;
    for line in text.lines() {
        if line == "event: update" {
            is_update = true;
        } else if let Some(data) = line.strip_prefix("data: ") {
            if is_update {
                out.push(serde_json::from_str(data).unwrap());
            }
            is_update = false;
        }
    }
    out
}

#[tokio::test]
async fn stream_pushes_an_update_at_once_and_then_every_second() {
    let addr = start().await;
    let mut conn = send_get(addr, stream::PATH).await;
    let text = read_until(&mut conn, Duration::from_secs(2), |t| {
        t.contains("\n\n") && updates(t).len() == 1
    })
    .await;
    let head = text.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{text}");
    assert!(head.contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("retry: 2000"), "{text}");
    assert!(text.contains("id: 1700000000000000000"), "{text}");
    let update = &updates(&text)[0];
    assert_eq!(update["v"], 1);
    assert_eq!(update["ts_ns"], 1_700_000_000_000_000_000u64);
    assert_eq!(update["snapshots"]["1s"]["window"], "1s");
    assert_eq!(update["snapshots"]["10s"]["window"], "10s");
    assert_eq!(update["snapshots"]["1s"]["stages"][1]["stage"], "inference");
    assert_eq!(update["alerts"].as_array().unwrap().len(), 3);
    assert_eq!(update["alerts"][0]["state"], "firing");
    let text = read_until(&mut conn, Duration::from_millis(2500), |t| {
        updates(t).len() == 2
    })
    .await;
    assert_eq!(updates(&text)[1]["v"], 1);
}

#[tokio::test]
async fn stream_refuses_query_parameters() {
    let addr = start().await;
    let (head, body) = get(addr, "/api/stream?window=5s").await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["error"],
        "unknown query 'window=5s': /api/stream takes no parameters"
    );
}
