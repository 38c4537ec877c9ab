//! Running the API: bind every listener first (so a taken port fails the
//! run at start), then serve them in a spawned task until shutdown, within
//! [`Limits`] (conn.rs). The agent runs the server on a thread of its own
//! ([`ApiThread`]), so no request can hold up the tracer's loop.
use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    cache::CachedSource,
    conn::Connections,
    limits::Limits,
    listen::{bind_tcp, bind_unix, ApiError, SocketFile},
    routes::router,
    ApiSpec,
};
use crate::sinks::{source::Source, SnapshotSource};

/// How long connections may take to finish once shutdown is asked for;
/// after that they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Threads of the API runtime's blocking pool.
const BLOCKING_THREADS: usize = 4;

/// The API thread's nice value: under CPU contention the tracer's thread
/// (nice 0) runs first.
const API_NICE: libc::c_int = 5;

/// A running API server.
#[derive(Debug)]
pub struct ApiHandle {
    tcp: Option<SocketAddr>,
    socket: Option<PathBuf>,
    task: JoinHandle<Result<(), ApiError>>,
}

impl ApiHandle {
    /// The TCP address actually bound (the real port when asked for port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The unix socket served.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// Waits until the server has stopped (after the shutdown future
    /// completed) and its socket file is removed.
    pub async fn join(self) -> Result<(), ApiError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ApiError::Serve(std::io::Error::other(e))),
        }
    }
}

/// [`serve_with`] the default limits, lowered to the descriptors this
/// process has left ([`Limits::for_this_process`]).
pub async fn serve(
    spec: &ApiSpec,
    source: Source,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ApiHandle, ApiError> {
    serve_with(spec, source, Limits::for_this_process(), shutdown).await
}

/// Binds what `spec` asks for (TCP on 127.0.0.1:`port`, `Some(0)` meaning an
/// ephemeral port; and/or a unix socket with mode 0600), then serves the API
/// over `source` (through a [`CachedSource`]) in a spawned task until
/// `shutdown` completes. Bind errors are returned before anything is
/// served. Must be called inside a tokio runtime; the socket file is
/// removed when the server stops or the runtime is dropped.
pub async fn serve_with(
    spec: &ApiSpec,
    source: Source,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ApiHandle, ApiError> {
    let tcp = match spec.port {
        Some(port) => Some(bind_tcp(port).await?),
        None => None,
    };
    let tcp_addr = match &tcp {
        Some(listener) => Some(listener.local_addr().map_err(ApiError::Serve)?),
        None => None,
    };
    let unix = match &spec.socket {
        Some(path) => Some(bind_unix(path)?),
        None => None,
    };
    let socket = unix.as_ref().map(|(_, file)| file.path().to_path_buf());
    let app = router(Arc::new(CachedSource::new(source)), limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let connections = Connections::new(limits, stop_rx);
    let task = tokio::spawn(async move {
        let (unix, socket_file): (_, Option<SocketFile>) = match unix {
            Some((listener, file)) => (Some(listener), Some(file)),
            None => (None, None),
        };
        let serving = async {
            let tcp = async {
                if let Some(listener) = tcp {
                    connections
                        .clone()
                        .accept_until_stopped(listener, app.clone())
                        .await;
                }
            };
            let unix = async {
                if let Some(listener) = unix {
                    connections
                        .clone()
                        .accept_until_stopped(listener, app.clone())
                        .await;
                }
            };
            tokio::join!(tcp, unix, connections.clone().sweep_until_stopped());
        };
        let stop = async {
            shutdown.await;
            let _ = stop_tx.send(true);
            // Requests in progress may finish; idle connections close now.
            let grace = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            while connections.count() > 0 && tokio::time::Instant::now() < grace {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            connections.close_all();
        };
        tokio::join!(serving, stop);
        drop(socket_file);
        Ok(())
    });
    Ok(ApiHandle {
        tcp: tcp_addr,
        socket,
        task,
    })
}

/// The API served from a thread of its own with its own runtime, so that
/// requests, however many, never run on (or delay) the tracer's thread.
/// Dropping it stops the server (and removes its socket file).
#[derive(Debug)]
pub struct ApiThread {
    tcp: Option<SocketAddr>,
    socket: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ApiError>>>,
}

impl ApiThread {
    /// Binds and starts serving; returns once the listeners are bound (or
    /// with the bind error).
    pub fn start(spec: &ApiSpec, source: Arc<dyn SnapshotSource>) -> Result<ApiThread, ApiError> {
        type Bound = Result<(Option<SocketAddr>, Option<PathBuf>), ApiError>;
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Bound>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let spec = spec.clone();
        let thread = std::thread::Builder::new()
            .name("adeline-api".into())
            .spawn(move || {
                lower_priority();
                // Handlers read the agent on the blocking pool
                // (source::read_source): a few threads, so that requests
                // waiting for the tracer's locks can never pile up threads.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(BLOCKING_THREADS)
                    .thread_name("adeline-api")
                    .build()
                    .map_err(ApiError::Serve)?;
                runtime.block_on(async move {
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    match serve(&spec, source, shutdown).await {
                        Ok(handle) => {
                            let at = (
                                handle.tcp_addr(),
                                handle.socket_path().map(Path::to_path_buf),
                            );
                            let _ = bound_tx.send(Ok(at));
                            handle.join().await
                        }
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            Ok(())
                        }
                    }
                })
            })
            .map_err(ApiError::Serve)?;
        match bound_rx.recv() {
            Ok(Ok((tcp, socket))) => Ok(ApiThread {
                tcp,
                socket,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // The thread ended without a word: its runtime failed to start.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(ApiError::Serve(std::io::Error::other(
                    "the API thread ended at start",
                ))),
            },
        }
    }

    /// The TCP address actually bound.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The unix socket served.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// Stops the server (connections get [`SHUTDOWN_GRACE`]) and waits for
    /// its thread; the socket file is removed.
    pub fn stop(mut self) -> Result<(), ApiError> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), ApiError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ApiError::Serve(std::io::Error::other(
                "the API thread panicked",
            ))),
        }
    }
}

impl Drop for ApiThread {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// Lowers the calling thread's CPU priority to [`API_NICE`] (Linux nice
/// values are per thread). Best effort.
fn lower_priority() {
    // SAFETY: gettid and setpriority on the calling thread only.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, API_NICE);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use serde_json::{json, Value};

    use super::*;
    use crate::metrics::snapshot::{Snapshot, Window};
    use crate::{
        cmd::summary::client::{get, request, Endpoint},
        sinks::api::fixtures::{sample_alerts, sample_snapshot, FakeSource},
    };

    /// Runs the blocking client off the runtime thread.
    async fn fetch(endpoint: &Endpoint, method: &'static str, path: &str) -> (u16, Value) {
        let endpoint = endpoint.clone();
        let path = path.to_string();
        let response = tokio::task::spawn_blocking(move || request(&endpoint, method, &path))
            .await
            .unwrap()
            .unwrap();
        let body = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", response.body));
        (response.status, body)
    }

    async fn start(
        spec: ApiSpec,
    ) -> (ApiHandle, tokio::sync::oneshot::Sender<()>, Arc<FakeSource>) {
        let source = Arc::new(FakeSource::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = serve(&spec, source.clone(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        (handle, tx, source)
    }

    #[tokio::test]
    async fn every_endpoint_over_tcp() {
        let (handle, stop, source) = start(ApiSpec {
            port: Some(0),
            socket: None,
        })
        .await;
        let addr = handle.tcp_addr().unwrap();
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        assert_ne!(addr.port(), 0);
        assert_eq!(handle.socket_path(), None);
        let at = Endpoint::Tcp(addr);

        assert_eq!(
            fetch(&at, "GET", "/healthz").await,
            (200, json!({"status": "ok"}))
        );

        let (status, body) = fetch(&at, "GET", "/api/summary").await;
        assert_eq!(status, 200);
        assert_eq!(source.windows(), vec![Window::S10], "default window");
        let snapshot: Snapshot = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(snapshot, sample_snapshot(Window::S10));
        // The wire format, field by field.
        assert_eq!(body["v"], 1);
        assert_eq!(body["ts_ns"], 1_700_000_000_000_000_000u64);
        assert_eq!(body["window"], "10s");
        assert_eq!(body["window_ns"], 10_000_000_000u64);
        assert_eq!(body["events"], 1_234_567);
        assert_eq!(body["drops"], 12);
        let infer = &body["stages"][1];
        assert_eq!(
            infer,
            &json!({
                "stage": "inference", "rate_hz": 30.0,
                "count": 300, "min_ns": 15_000_000, "mean_ns": 20_000_000,
                "p50_ns": 19_500_000, "p90_ns": 24_000_000, "p95_ns": 25_000_000,
                "p99_ns": 31_000_000, "p999_ns": 33_000_000, "max_ns": 33_500_000,
                "total_ns": 6_000_000_000u64, "self_ns": 6_000_000_000u64,
                "frame_share": 0.625
            })
        );
        assert_eq!(body["stages"][0]["frame_share"], Value::Null);
        assert_eq!(
            body["frames"],
            json!({
                "root": "frame", "fps": 29.5,
                "count": 295, "min_ns": 25_000_000, "mean_ns": 32_000_000,
                "p50_ns": 31_000_000, "p90_ns": 36_000_000, "p95_ns": 38_000_000,
                "p99_ns": 45_000_000, "p999_ns": 47_000_000, "max_ns": 48_000_000
            })
        );
        assert_eq!(
            body["gauges"][0],
            json!({"gauge": "queue_depth", "count": 300, "last": 3, "min": 0, "max": 8, "mean": 2.5})
        );
        assert_eq!(
            body["bottleneck"],
            json!({
                "top_self_share": {"stage": "inference", "share": 0.625},
                "p99_growth": {"stage": "tracking", "p99_ns": 4_000_000,
                               "earlier_p99_ns": 2_000_000, "ratio": 2.0}
            })
        );

        for (query, window) in [
            ("1s", Window::S1),
            ("10s", Window::S10),
            ("60s", Window::S60),
            ("all", Window::All),
        ] {
            let (status, body) = fetch(&at, "GET", &format!("/api/summary?window={query}")).await;
            assert_eq!(status, 200);
            assert_eq!(body["window"], window.as_str());
            assert!(source.windows().contains(&window));
        }

        // Snapshots are cached for MAX_AGE (cache.rs): past it, the
        // source is asked again.
        tokio::time::sleep(super::super::cache::MAX_AGE).await;
        let (status, body) = fetch(&at, "GET", "/api/stages/inference?window=1s").await;
        assert_eq!(status, 200);
        assert_eq!(body, infer.clone());
        assert_eq!(source.windows().last(), Some(&Window::S1));
        // Percent-encoded names are decoded.
        let (status, body) = fetch(&at, "GET", "/api/stages/post%20process").await;
        assert_eq!((status, &body["stage"]), (200, &json!("post process")));

        let (status, body) = fetch(&at, "GET", "/api/alerts").await;
        assert_eq!(status, 200);
        let alerts: Vec<crate::alerts::AlertEvent> =
            serde_json::from_value(body["alerts"].clone()).unwrap();
        assert_eq!(alerts, sample_alerts());
        assert_eq!(
            body["alerts"][0],
            json!({"state": "firing", "rule": "p99(inference) > 30ms for 5s",
                   "value": 31_000_000.0, "threshold": 30_000_000.0,
                   "since_ns": 1_699_999_990_000_000_000u64,
                   "ts_ns": 1_699_999_995_000_000_000u64})
        );

        stop.send(()).unwrap();
        handle.join().await.unwrap();
        let e = tokio::task::spawn_blocking(move || get(&at, "/healthz"))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("no adeline-trace agent is listening"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn client_errors_are_json() {
        let (handle, stop, _) = start(ApiSpec {
            port: Some(0),
            socket: None,
        })
        .await;
        let at = Endpoint::Tcp(handle.tcp_addr().unwrap());
        let cases: [(&str, &str, u16, &str); 8] = [
            (
                "GET",
                "/api/summary?window=5m",
                400,
                "unknown window '5m': expected 1s, 10s, 60s or all",
            ),
            (
                "GET",
                "/api/summary?windw=1s",
                400,
                "unknown query parameter 'windw': accepted: window",
            ),
            (
                "GET",
                "/api/stages/inference?window=",
                400,
                "unknown window '': expected 1s, 10s, 60s or all",
            ),
            (
                "GET",
                "/api/alerts?window=1s",
                400,
                "unknown query parameter 'window': accepted: none",
            ),
            (
                "GET",
                "/api/stages/nope",
                404,
                "no stage 'nope': the stages are preprocess, inference, post process, tracking",
            ),
            (
                "GET",
                "/api/stages/a%0Ab",
                404,
                "no stage 'a?b': the stages are preprocess, inference, post process, tracking",
            ),
            (
                "GET",
                "/metrics/x",
                404,
                "no endpoint /metrics/x: try /, /healthz, /api/summary, /api/stages/NAME, /api/alerts, /api/history or /metrics",
            ),
            (
                "POST",
                "/api/summary",
                405,
                "method POST is not allowed on /api/summary: the API is read-only, use GET",
            ),
        ];
        for (method, path, status, error) in cases {
            assert_eq!(
                fetch(&at, method, path).await,
                (status, json!({ "error": error })),
                "{method} {path}"
            );
        }
        stop.send(()).unwrap();
        handle.join().await.unwrap();
    }

    #[tokio::test]
    async fn method_not_allowed_names_the_allowed_methods() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (handle, stop, _) = start(ApiSpec {
            port: Some(0),
            socket: None,
        })
        .await;
        let mut conn = tokio::net::TcpStream::connect(handle.tcp_addr().unwrap())
            .await
            .unwrap();
        conn.write_all(b"DELETE /api/alerts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        let response = response.to_ascii_lowercase();
        assert!(response.starts_with("http/1.1 405"), "{response}");
        assert!(response.contains("\r\nallow: get,head\r\n"), "{response}");
        assert!(
            response.contains("\r\ncontent-type: application/json\r\n"),
            "{response}"
        );
        stop.send(()).unwrap();
        handle.join().await.unwrap();
    }

    #[tokio::test]
    async fn unix_socket_serves_and_is_removed_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        // A stale socket from a killed agent is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (handle, stop, _) = start(ApiSpec {
            port: None,
            socket: Some(path.clone()),
        })
        .await;
        assert_eq!(handle.tcp_addr(), None);
        assert_eq!(handle.socket_path(), Some(path.as_path()));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let at = Endpoint::Unix(path.clone());
        assert_eq!(
            fetch(&at, "GET", "/healthz").await,
            (200, json!({"status": "ok"}))
        );
        let (status, body) = fetch(&at, "GET", "/api/summary?window=all").await;
        assert_eq!(status, 200);
        assert_eq!(body["window"], "all");

        // A second agent on the same socket is refused while this one lives.
        let e = serve(
            &ApiSpec {
                port: None,
                socket: Some(path.clone()),
            },
            Arc::new(FakeSource::default()),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ApiError::SocketInUse { .. }), "{e}");

        stop.send(()).unwrap();
        handle.join().await.unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
    }

    #[tokio::test]
    async fn shutdown_is_not_held_up_by_an_idle_connection() {
        let (handle, stop, _) = start(ApiSpec {
            port: Some(0),
            socket: None,
        })
        .await;
        // Connected, never sends a request.
        let _idle = tokio::net::TcpStream::connect(handle.tcp_addr().unwrap())
            .await
            .unwrap();
        stop.send(()).unwrap();
        tokio::time::timeout(SHUTDOWN_GRACE * 3, handle.join())
            .await
            .expect("server stopped")
            .unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_fails_before_serving() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = serve(
            &ApiSpec {
                port: Some(port),
                socket: None,
            },
            Arc::new(FakeSource::default()),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot serve the API on 127.0.0.1:{port}: address in use; pass --api-port N or --no-api")
        );
    }
}
