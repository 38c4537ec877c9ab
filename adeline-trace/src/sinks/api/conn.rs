//! The API server's connections, bounded by [`Limits`]: accepted from TCP
//! and the unix socket into one registry (one cap for both), each served
//! by hyper's HTTP/1 in a task of its own, watched by a sweeper that closes
//! the ones past their timeouts.
//!
//! A connection is **busy** while a request is in progress (from its head
//! being parsed to the end of its response body) and **idle** otherwise:
//! just accepted, trickling a request head, or waiting between keep-alive
//! requests. Idle connections cost the server nothing but a descriptor and
//! a buffer, so they are what is shed: at the cap, a new connection closes
//! the one idle longest; only when every connection is busy is the new one
//! refused (a `503` written without waiting, then closed).
//!
//! The sweeper (every [`SWEEP_EVERY`]) closes
//! - an idle connection whose request head started (at accept, or at its
//!   first byte after a keep-alive pause) more than `header_timeout` ago:
//!   half-open connections and slowloris trickles;
//! - an idle kept-alive connection quiet for `idle_timeout`;
//! - a busy connection that moved no byte for `stall_timeout`: a client
//!   that does not read its response or its stream.
//!
//! A handler gets `request_timeout` to answer (then `503`). Memory per
//! connection is bounded by hyper's buffer (`max_head_bytes`): a request
//! head beyond it is answered `431`, bodies are never read, and a response
//! body is only polled while that buffer has room, so a slow reader of
//! `/api/stream` holds one update, not a backlog.
use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderValue, Request, Response, StatusCode},
    response::IntoResponse as _,
    Json, Router,
};
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, UnixListener},
    sync::{watch, Notify},
};
use tower::ServiceExt as _;

use super::limits::Limits;
use crate::sinks::source::ECHO_CHARS;

/// How often connections are checked against their timeouts.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// After the process ran out of descriptors (EMFILE/ENFILE), the accept
/// loop sheds one idle connection and pauses this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// A flood is over when this few connections are left...
const CALM_CONNECTIONS: usize = 8;
/// ...after at least this many were open: then the memory freed by the
/// flood is given back to the system.
const FLOOD_CONNECTIONS: usize = 64;

/// A listener the server accepts from.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
    /// Writes what fits of `buf` now, without waiting.
    fn try_write(io: &Self::Io, buf: &[u8]) -> io::Result<usize>;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (stream, _) = TcpListener::accept(self).await?;
        Ok(stream)
    }
    fn try_write(io: &Self::Io, buf: &[u8]) -> io::Result<usize> {
        io.try_write(buf)
    }
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok(stream)
    }
    fn try_write(io: &Self::Io, buf: &[u8]) -> io::Result<usize> {
        io.try_write(buf)
    }
}

/// Milliseconds since the server started, plus one (0 means "not set").
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        self.0.elapsed().as_millis() as u64 + 1
    }
}

/// One connection's state, shared by its task, its IO and the registry.
#[derive(Debug)]
struct Conn {
    id: u64,
    clock: Clock,
    /// Requests in progress (their response not finished).
    busy: AtomicU32,
    /// When the connection last became idle (accept, or a response ended).
    idle_since: AtomicU64,
    /// When the head of the next request started (0: not yet).
    head_since: AtomicU64,
    /// When a byte was last read or written.
    progress: AtomicU64,
    /// Wakes the task to drop the connection.
    close: Notify,
}

impl Conn {
    fn new(id: u64, clock: Clock) -> Conn {
        let now = clock.now();
        Conn {
            id,
            clock,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            // A new connection's first request head is due from now.
            head_since: AtomicU64::new(now),
            progress: AtomicU64::new(now),
            close: Notify::new(),
        }
    }

    /// A request was parsed: busy until the returned guard is dropped
    /// (with the response body).
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
        self.progress.store(self.clock.now(), Relaxed);
        Busy(self.clone())
    }

    fn read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.clock.now();
        self.progress.store(now, Relaxed);
        if self.busy.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(now, Relaxed);
        }
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.progress.store(self.clock.now(), Relaxed);
        }
    }

    /// Since when an idle connection has held its slot without a request
    /// being served (None when busy).
    fn idle_from(&self) -> Option<u64> {
        if self.busy.load(Relaxed) > 0 {
            return None;
        }
        match self.head_since.load(Relaxed) {
            0 => Some(self.idle_since.load(Relaxed)),
            head => Some(head),
        }
    }

    /// Past one of its timeouts at `now`.
    fn overdue(&self, now: u64, limits: &Limits) -> bool {
        let older =
            |since: u64, limit: Duration| now.saturating_sub(since) > limit.as_millis() as u64;
        if self.busy.load(Relaxed) > 0 {
            return older(self.progress.load(Relaxed), limits.stall_timeout);
        }
        match self.head_since.load(Relaxed) {
            0 => older(self.idle_since.load(Relaxed), limits.idle_timeout),
            head => older(head, limits.header_timeout),
        }
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since.store(conn.clock.now(), Relaxed);
        conn.busy.fetch_sub(1, Relaxed);
    }
}

/// The connections of one server.
pub struct Connections {
    limits: Limits,
    clock: Clock,
    open: Mutex<Vec<Arc<Conn>>>,
    next_id: AtomicU64,
    /// Most connections open at once since memory was last given back.
    high_water: AtomicUsize,
    /// Connection tasks alive: the registered connections plus those shed
    /// or timed out whose task has not ended yet. Each holds a descriptor.
    alive: AtomicUsize,
    /// Notified when a connection task ends.
    ended: Notify,
    /// Becomes true when the server shuts down.
    stop: watch::Receiver<bool>,
}

impl Connections {
    pub fn new(limits: Limits, stop: watch::Receiver<bool>) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            clock: Clock(Instant::now()),
            open: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            high_water: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            ended: Notify::new(),
            stop,
        })
    }

    fn open(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open().len()
    }

    /// Registers a new connection, shedding the connection idle longest
    /// at the cap; None (refuse it) when every open connection is busy.
    fn admit(&self) -> Option<Arc<Conn>> {
        let mut open = self.open();
        if open.len() >= self.limits.max_connections && !shed_idlest(&mut open) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        let conn = Arc::new(Conn::new(id, self.clock));
        open.push(conn.clone());
        self.high_water.fetch_max(open.len(), Relaxed);
        Some(conn)
    }

    fn remove(&self, id: u64) {
        let mut open = self.open();
        if let Some(i) = open.iter().position(|c| c.id == id) {
            open.swap_remove(i);
        }
    }

    /// Closes the connections past their timeouts; after a flood, gives
    /// the freed memory back.
    fn sweep(&self) {
        let now = self.clock.now();
        let mut open = self.open();
        open.retain(|conn| {
            let overdue = conn.overdue(now, &self.limits);
            if overdue {
                conn.close.notify_one();
            }
            !overdue
        });
        let left = open.len();
        drop(open);
        if left <= CALM_CONNECTIONS && self.high_water.load(Relaxed) >= FLOOD_CONNECTIONS {
            self.high_water.store(left, Relaxed);
            release_free_memory();
        }
    }

    /// Closes every connection now (the end of the shutdown grace).
    pub fn close_all(&self) {
        for conn in self.open().drain(..) {
            conn.close.notify_one();
        }
    }

    /// Checks the timeouts every [`SWEEP_EVERY`] until shutdown.
    pub async fn sweep_until_stopped(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(SWEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = stopped(self.stop.clone());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => self.sweep(),
            }
        }
    }

    /// Accepts from `listener` until shutdown; each connection is served
    /// in a task of its own.
    pub async fn accept_until_stopped<L: Accept>(self: Arc<Self>, listener: L, app: Router) {
        let stop = stopped(self.stop.clone());
        tokio::pin!(stop);
        let refusal = busy_response(self.limits.max_connections);
        loop {
            let accepted = tokio::select! {
                () = &mut stop => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(io) => match self.admit() {
                    Some(conn) => {
                        self.alive.fetch_add(1, Relaxed);
                        tokio::spawn(self.clone().serve(io, conn, app.clone()));
                        self.wait_for_descriptors().await;
                    }
                    // Dropped right after: closed.
                    None => drop(L::try_write(&io, &refusal)),
                },
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    shed_idlest(&mut self.open());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                // The client gave up before it was accepted (ECONNABORTED)
                // or the like: next one.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// Waits until the tasks of shed connections have ended, so that the
    /// descriptors held (not only the connections registered) stay within
    /// the cap: a shed connection's socket is closed by its own task, which
    /// a flood of accepts would otherwise never let run.
    async fn wait_for_descriptors(&self) {
        let max = self.limits.max_connections;
        loop {
            let ended = self.ended.notified();
            if self.alive.load(Relaxed) <= max {
                return;
            }
            // Bounded: a task that somehow never ends cannot stop accepting.
            let _ = tokio::time::timeout(ACCEPT_BACKOFF, ended).await;
        }
    }

    /// Serves one connection until it ends, is closed by the sweeper or
    /// shed, or (after a graceful end of its request) shutdown.
    async fn serve<S>(self: Arc<Self>, io: S, conn: Arc<Conn>, app: Router)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _registered = Registered {
            connections: self.clone(),
            id: conn.id,
        };
        let io = TokioIo::new(Tracked {
            inner: io,
            conn: conn.clone(),
        });
        let limits = self.limits;
        let requests = conn.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            respond(
                requests.begin(),
                app.clone(),
                request,
                limits.request_timeout,
            )
        });
        let connection = http1::Builder::new()
            .max_buf_size(limits.max_head_bytes)
            .max_headers(limits.max_headers)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let mut stop = self.stop.clone();
        let mut draining = false;
        loop {
            tokio::select! {
                _ = connection.as_mut() => return,
                () = conn.close.notified() => return,
                _ = stop.changed(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Closes the idle connection that has held its slot longest; false when
/// every connection is busy.
fn shed_idlest(open: &mut Vec<Arc<Conn>>) -> bool {
    let idlest = open
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((c.idle_from()?, i)))
        .min();
    match idlest {
        Some((_, i)) => {
            open.swap_remove(i).close.notify_one();
            true
        }
        None => false,
    }
}

/// Removes a connection from the registry, and from the tasks alive, when
/// its task ends.
struct Registered {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // After the connection (and its socket) was dropped: declared first
        // in `serve`, this guard is dropped last.
        self.connections.remove(self.id);
        self.connections.alive.fetch_sub(1, Relaxed);
        self.connections.ended.notify_waiters();
    }
}

/// Completes once shutdown was signalled (or the server is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Gives the memory freed after a flood of connections back to the system
/// (glibc keeps freed heap pages mapped, so without this the agent's RSS
/// stays at its peak).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

/// A JSON error answer of the server itself (not of a route); the
/// connection is closed after it.
fn error_response(status: StatusCode, error: String) -> Response<Body> {
    let mut response = (status, Json(ErrorBody { error })).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The `503` written to a connection beyond the cap when none can be shed.
fn busy_response(max: usize) -> Vec<u8> {
    let body = serde_json::to_string(&ErrorBody {
        error: format!(
            "the agent is serving its maximum of {max} connections, all busy; try again later"
        ),
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Runs the router for one request within `timeout`; the response body
/// carries `busy` until it is finished.
async fn respond(
    busy: Busy,
    app: Router,
    request: Request<Incoming>,
    timeout: Duration,
) -> Result<Response<Finishing>, Infallible> {
    let what = format!(
        "{} {}",
        request.method(),
        crate::format::one_line(request.uri().path(), ECHO_CHARS)
    );
    let response = match tokio::time::timeout(timeout, app.oneshot(request.map(Body::new))).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{what} took longer than {}s to answer; try again",
                timeout.as_secs_f64()
            ),
        ),
    };
    Ok(response.map(|body| Finishing { body, _busy: busy }))
}

/// A response body that keeps its connection busy until it is dropped.
struct Finishing {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Finishing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's IO, noting every byte moved on its [`Conn`].
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.conn.read(buf.filled().len() - before);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.conn.wrote(n);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.conn.wrote(n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
