//! Delivery to the collector, off the tracing thread, never blocking it:
//! what was delivered and lost is counted ([`Counters`]).
//!
//! - Metrics: the SDK's periodic reader (a thread of its own) collects and
//!   calls [`GuardedMetrics::export`], which runs the OTLP exporter (with
//!   its retries and exponential backoff) under a deadline. Temporality is
//!   cumulative, so a lost export loses resolution, not counts: the next
//!   one carries the totals.
//! - Traces: finished frames go into a bounded queue ([`TraceQueue`]); a
//!   full queue drops the frame (counted). A worker thread sends batches
//!   with the same exporter retries and deadline; a batch whose every
//!   attempt failed is dropped (counted).
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
        exporter::PushMetricExporter,
        Temporality,
    },
    trace::{SpanData, SpanExporter as _},
};

use super::traces::{Frame, SpanMaker};
use crate::sinks::source::OutputHealth;

/// What one signal's pipeline delivered and lost (shared with its thread).
#[derive(Debug, Default)]
pub struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_exports: AtomicU64,
    pub queued: AtomicU64,
}

impl Counters {
    pub fn health(&self, output: &'static str) -> OutputHealth {
        OutputHealth {
            output,
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed_exports: self.failed_exports.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }

    fn delivered(&self, ok: bool, items: u64) {
        if ok {
            self.exported.fetch_add(items, Ordering::Relaxed);
        } else {
            self.failed_exports.fetch_add(1, Ordering::Relaxed);
            self.dropped.fetch_add(items, Ordering::Relaxed);
        }
    }
}

/// A runtime for the HTTP client (hyper needs one), used from one thread
/// at a time: the periodic reader's or the trace worker's.
fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The OTLP metric exporter under a deadline, counting data points.
pub struct GuardedMetrics {
    inner: opentelemetry_otlp::MetricExporter,
    runtime: tokio::runtime::Runtime,
    deadline: Duration,
    counters: Arc<Counters>,
}

impl GuardedMetrics {
    pub fn new(
        inner: opentelemetry_otlp::MetricExporter,
        deadline: Duration,
        counters: Arc<Counters>,
    ) -> std::io::Result<GuardedMetrics> {
        Ok(GuardedMetrics {
            inner,
            runtime: client_runtime()?,
            deadline,
            counters,
        })
    }

    fn send(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let points = data_points(metrics);
        // The timer is made inside the runtime (it needs its time driver).
        let sent = self.runtime.block_on(async {
            tokio::time::timeout(self.deadline, self.inner.export(metrics)).await
        });
        let ok = matches!(sent, Ok(Ok(())));
        self.counters.delivered(ok, points);
        // Never an error: the reader would only log it; it is counted.
        Ok(())
    }
}

impl PushMetricExporter for GuardedMetrics {
    fn export(
        &self,
        metrics: &ResourceMetrics,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // The periodic reader blocks on this future on its own thread; the
        // work is done here, synchronously, under the deadline.
        let result = self.send(metrics);
        async move { result }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

impl std::fmt::Debug for GuardedMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardedMetrics")
    }
}

/// The data points of an export (a histogram or a counter series is one).
pub fn data_points(metrics: &ResourceMetrics) -> u64 {
    fn points<T>(d: &MetricData<T>) -> usize {
        match d {
            MetricData::Gauge(g) => g.data_points().count(),
            MetricData::Sum(s) => s.data_points().count(),
            MetricData::Histogram(h) => h.data_points().count(),
            MetricData::ExponentialHistogram(h) => h.data_points().count(),
        }
    }
    metrics
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .map(|m| match m.data() {
            AggregatedMetrics::F64(d) => points(d),
            AggregatedMetrics::U64(d) => points(d),
            AggregatedMetrics::I64(d) => points(d),
        } as u64)
        .sum()
}

/// Spans sent in one request at most.
const BATCH_SPANS: usize = 512;

/// The bounded queue of finished frames and the thread that makes their
/// spans and sends them.
pub struct TraceQueue {
    tx: Option<SyncSender<Frame>>,
    worker: Option<JoinHandle<()>>,
    /// Set when the run ends before the queue is empty: the worker stops,
    /// what is left counts as dropped.
    abandoned: Arc<AtomicBool>,
    counters: Arc<Counters>,
    max_spans: u64,
    deadline: Duration,
}

impl TraceQueue {
    /// Starts the worker. At most `max_spans` spans wait at any time.
    pub fn start(
        exporter: opentelemetry_otlp::SpanExporter,
        max_spans: u64,
        deadline: Duration,
        counters: Arc<Counters>,
    ) -> std::io::Result<TraceQueue> {
        let (tx, rx) = sync_channel::<Frame>(max_spans.max(1) as usize);
        let runtime = client_runtime()?;
        let c = Arc::clone(&counters);
        let abandoned = Arc::new(AtomicBool::new(false));
        let a = Arc::clone(&abandoned);
        let worker = std::thread::Builder::new()
            .name("adeline-otlp-traces".into())
            .spawn(move || send_batches(rx, exporter, runtime, deadline, c, a))?;
        Ok(TraceQueue {
            tx: Some(tx),
            worker: Some(worker),
            abandoned,
            counters,
            max_spans,
            deadline,
        })
    }

    /// Queues one frame, or drops its spans (counted) when the queue is
    /// full. Never blocks.
    pub fn push(&self, frame: Frame) {
        let n = frame.span_count() as u64;
        let c = &self.counters;
        let Some(tx) = &self.tx else { return };
        if c.queued.load(Ordering::Relaxed) + n > self.max_spans {
            c.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        c.queued.fetch_add(n, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(frame) {
            c.queued.fetch_sub(n, Ordering::Relaxed);
            c.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sends what is queued, waiting at most the export deadline and a
    /// little more; what is left then (waiting or being sent) is dropped,
    /// counted, and the worker stops after its current request.
    pub fn finish(&mut self) {
        drop(self.tx.take());
        let Some(worker) = self.worker.take() else {
            return;
        };
        let until = Instant::now() + self.deadline + Duration::from_secs(1);
        while !worker.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if worker.is_finished() {
            let _ = worker.join();
            return;
        }
        self.abandoned.store(true, Ordering::SeqCst);
        let left = self.counters.queued.swap(0, Ordering::SeqCst);
        self.counters.dropped.fetch_add(left, Ordering::SeqCst);
    }
}

/// The worker: batches of up to [`BATCH_SPANS`] spans, one request each.
/// A batch stays counted as queued until its request ends.
fn send_batches(
    rx: Receiver<Frame>,
    exporter: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Runtime,
    deadline: Duration,
    counters: Arc<Counters>,
    abandoned: Arc<AtomicBool>,
) {
    let maker = SpanMaker::default();
    while !abandoned.load(Ordering::SeqCst) {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(frame) => frame,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch: Vec<SpanData> = first.spans(&maker);
        while batch.len() < BATCH_SPANS {
            match rx.try_recv() {
                Ok(more) => batch.extend(more.spans(&maker)),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let sent = runtime
            .block_on(async { tokio::time::timeout(deadline, exporter.export(batch)).await });
        if abandoned.load(Ordering::SeqCst) {
            break; // counted as dropped by `finish`
        }
        counters.queued.fetch_sub(n, Ordering::SeqCst);
        counters.delivered(matches!(sent, Ok(Ok(()))), n);
    }
    let _ = exporter.shutdown_with_timeout(Duration::from_millis(100));
}
