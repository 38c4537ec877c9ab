//! The server within its [`Limits`] (conn.rs), with short timeouts: slow
//! and silent clients are closed, the cap sheds idle connections before it
//! refuses busy ones, streams are counted, and a slow handler or a client
//! that does not read never holds the server.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

use super::{fixtures::FakeSource, serve_with, ApiHandle, ApiSpec, Limits};
use crate::{
    alerts::AlertEvent,
    metrics::snapshot::{Snapshot, Window},
    sinks::{api::fixtures::sample_snapshot, SnapshotSource},
};

const SHORT: Limits = Limits {
    max_connections: 256,
    max_streams: 16,
    header_timeout: Duration::from_millis(400),
    idle_timeout: Duration::from_millis(1200),
    request_timeout: Duration::from_millis(300),
    stall_timeout: Duration::from_millis(500),
    max_head_bytes: 16 << 10,
    max_headers: 64,
};

/// A server within `limits` over `source` on an ephemeral port (and a
/// unix socket in `socket_dir` when given).
async fn start(
    limits: Limits,
    source: Arc<dyn SnapshotSource>,
    socket_dir: Option<&tempfile::TempDir>,
) -> (ApiHandle, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spec = ApiSpec {
        port: Some(0),
        socket: socket_dir.map(|d| d.path().join("api.sock")),
    };
    let handle = serve_with(&spec, source, limits, async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    (handle, tx)
}

async fn connect(handle: &ApiHandle) -> TcpStream {
    TcpStream::connect(handle.tcp_addr().unwrap())
        .await
        .unwrap()
}

/// Reads until the peer closes; what was read and when it closed. Panics
/// after `limit`.
async fn read_to_close(conn: &mut (impl AsyncRead + Unpin), limit: Duration) -> (String, Instant) {
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 64 << 10];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(limit, read)
        .await
        .expect("the server did not close the connection in time");
    (String::from_utf8_lossy(&raw).into_owned(), closed)
}

/// Whether the peer is still connected after `wait` (no EOF, nothing sent).
async fn still_open(conn: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(wait, conn.read(&mut buf))
        .await
        .is_err()
}

/// One request on an open connection; reads one whole response (with a
/// Content-Length) and returns its status line and body.
async fn exchange(conn: &mut TcpStream, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before the response ended");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                let status = head.lines().next().unwrap().to_string();
                return (status, body.to_string());
            }
        }
    }
}

/// A new connection with an `/api/stream` open on it (its head read).
async fn open_stream(handle: &ApiHandle) -> TcpStream {
    let mut conn = connect(handle).await;
    conn.write_all(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    conn
}

#[tokio::test]
async fn silent_and_trickling_clients_are_closed_after_the_header_timeout() {
    let (handle, stop) = start(SHORT, Arc::new(FakeSource::default()), None).await;
    let started = Instant::now();
    let mut silent = connect(&handle).await;
    let mut trickle = connect(&handle).await;
    let trickler = tokio::spawn(async move {
        let _ = trickle
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if trickle.write_all(b"X").await.is_err() {
                break;
            }
        }
        read_to_close(&mut trickle, Duration::from_secs(5)).await
    });
    let (text, closed) = read_to_close(&mut silent, Duration::from_secs(5)).await;
    assert_eq!(text, "");
    let after = closed - started;
    assert!(after >= SHORT.header_timeout, "{after:?}");
    assert!(
        after < SHORT.header_timeout + Duration::from_millis(700),
        "{after:?}"
    );
    let (text, closed) = trickler.await.unwrap();
    assert_eq!(text, "", "the trickled request was never answered");
    assert!(closed - started < SHORT.header_timeout + Duration::from_millis(700));
    stop.send(()).unwrap();
    handle.join().await.unwrap();
}

#[tokio::test]
async fn kept_alive_connections_close_after_the_idle_timeout() {
    let (handle, stop) = start(SHORT, Arc::new(FakeSource::default()), None).await;
    let mut conn = connect(&handle).await;
    let (status, body) = exchange(&mut conn, "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "{\"status\":\"ok\"}")
    );
    // Quiet for longer than the header timeout: still open (idle, not
    // half-way through a request head), and serves the next request.
    tokio::time::sleep(SHORT.header_timeout + Duration::from_millis(300)).await;
    let (status, _) = exchange(&mut conn, "/api/alerts").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let idle = Instant::now();
    let (text, closed) = read_to_close(&mut conn, Duration::from_secs(5)).await;
    assert_eq!(text, "");
    let after = closed - idle;
    assert!(
        after >= SHORT.idle_timeout - Duration::from_millis(50),
        "{after:?}"
    );
    assert!(
        after < SHORT.idle_timeout + Duration::from_millis(700),
        "{after:?}"
    );
    stop.send(()).unwrap();
    handle.join().await.unwrap();
}

#[tokio::test]
async fn at_the_cap_the_connection_idle_longest_is_shed() {
    let limits = Limits {
        max_connections: 4,
        ..SHORT
    };
    let dir = tempfile::tempdir().unwrap();
    let (handle, stop) = start(limits, Arc::new(FakeSource::default()), Some(&dir)).await;
    // Four idle connections, TCP and unix socket together.
    let mut oldest = connect(&handle).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut unix = UnixStream::connect(handle.socket_path().unwrap())
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        idle.push(connect(&handle).await);
    }
    // A fifth connection is served; the oldest idle one made room.
    let mut fifth = connect(&handle).await;
    let (status, _) = exchange(&mut fifth, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (text, _) = read_to_close(&mut oldest, Duration::from_millis(300)).await;
    assert_eq!(text, "");
    // The next one sheds the unix connection, the next oldest.
    let mut sixth = connect(&handle).await;
    let (status, _) = exchange(&mut sixth, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (text, _) = read_to_close(&mut unix, Duration::from_millis(300)).await;
    assert_eq!(text, "");
    for conn in &mut idle {
        assert!(still_open(conn, Duration::from_millis(50)).await);
    }
    stop.send(()).unwrap();
    handle.join().await.unwrap();
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_gets_a_503() {
    let limits = Limits {
        max_connections: 2,
        max_streams: 3,
        // Streams are busy, never stalled here: they are read.
        stall_timeout: Duration::from_secs(30),
        ..SHORT
    };
    let (handle, stop) = start(limits, Arc::new(FakeSource::default()), None).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(open_stream(&handle).await);
    }
    let mut third = connect(&handle).await;
    let (text, _) = read_to_close(&mut third, Duration::from_secs(2)).await;
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "{\"error\":\"the agent is serving its maximum of 2 connections, all busy; try again later\"}"
        ),
        "{text}"
    );
    stop.send(()).unwrap();
    handle.join().await.unwrap();
}

#[tokio::test]
async fn streams_beyond_their_cap_get_a_503() {
    let limits = Limits {
        max_streams: 1,
        stall_timeout: Duration::from_secs(30),
        ..SHORT
    };
    let (handle, stop) = start(limits, Arc::new(FakeSource::default()), None).await;
    let first = open_stream(&handle).await;
    let mut second = connect(&handle).await;
    let (status, body) = exchange(&mut second, "/api/stream").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(
        body,
        "{\"error\":\"the agent serves at most 1 streams and they are all open; close a \
         dashboard, or try again later\"}"
    );
    // Closing the first frees its slot.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _third = open_stream(&handle).await;
    stop.send(()).unwrap();
    handle.join().await.unwrap();
}

/// A source whose snapshots are large (`stages` copies of the sample's
/// stages) or slow to compute.
struct Heavy {
    stages: usize,
    delay: Duration,
}

impl SnapshotSource for Heavy {
    fn snapshot(&self, window: Window) -> Snapshot {
        std::thread::sleep(self.delay);
        let mut s = sample_snapshot(window);
        let one = s.stages[0].clone();
        s.stages = (0..self.stages)
            .map(|i| {
                let mut stage = one.clone();
                stage.stage = format!("stage{i}");
                stage
            })
            .collect();
        s
    }
    fn alerts(&self) -> Vec<AlertEvent> {
        vec![]
    }
}

#[tokio::test]
async fn a_response_nobody_reads_is_dropped_after_the_stall_timeout() {
    let source = Heavy {
        stages: 20_000,
        delay: Duration::ZERO,
    };
    let full = serde_json::to_vec(&source.snapshot(Window::All))
        .unwrap()
        .len();
    assert!(full > 4 << 20, "{full}");
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        request_timeout: Duration::from_secs(10),
        ..SHORT
    };
    let (handle, stop) = start(limits, Arc::new(source), Some(&dir)).await;
    // A unix socket: the kernel buffers a few hundred kilobytes of it.
    let mut conn = UnixStream::connect(handle.socket_path().unwrap())
        .await
        .unwrap();
    conn.write_all(b"GET /api/summary?window=all HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The response has started (the snapshot may take seconds to build
    // on a busy machine)...
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut first))
        .await
        .expect("the response started")
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200 OK"));
    // ...and, not read, it stalls and is dropped.
    tokio::time::sleep(SHORT.stall_timeout + Duration::from_millis(1500)).await;
    let (text, _) = read_to_close(&mut conn, Duration::from_secs(2)).await;
    let got = n + text.len();
    assert!(got < full, "{got} of {full} bytes");
    stop.send(()).unwrap();
    handle.join().await.unwrap();
}

#[tokio::test]
async fn a_slow_handler_gets_a_503_and_never_holds_the_server() {
    let source = Heavy {
        stages: 1,
        delay: Duration::from_millis(1500),
    };
    let (handle, stop) = start(SHORT, Arc::new(source), None).await;
    let mut slow = connect(&handle).await;
    let asked = Instant::now();
    let summary = tokio::spawn(async move { exchange(&mut slow, "/api/summary").await });
    // While the snapshot is being computed, the server answers others.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut health = connect(&handle).await;
    let started = Instant::now();
    let (status, _) = exchange(&mut health, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(started.elapsed() < Duration::from_millis(200));
    let (status, body) = summary.await.unwrap();
    assert!(asked.elapsed() < Duration::from_millis(1000));
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(
        body,
        "{\"error\":\"GET /api/summary took longer than 0.3s to answer; try again\"}"
    );
    stop.send(()).unwrap();
    handle.join().await.unwrap();
}

#[tokio::test]
async fn request_heads_are_bounded() {
    let (handle, stop) = start(SHORT, Arc::new(FakeSource::default()), None).await;
    let mut conn = connect(&handle).await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(SHORT.max_head_bytes)
    );
    let _ = conn.write_all(big.as_bytes()).await;
    let (text, _) = read_to_close(&mut conn, Duration::from_secs(2)).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    let mut conn = connect(&handle).await;
    let many: String = (0..SHORT.max_headers + 1)
        .map(|i| format!("X-{i}: 1\r\n"))
        .collect();
    let _ = conn
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
        .await;
    let (text, _) = read_to_close(&mut conn, Duration::from_secs(2)).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    stop.send(()).unwrap();
    handle.join().await.unwrap();
}
