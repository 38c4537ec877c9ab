//! OpenTelemetry export (`--otlp ENDPOINT`): the per-stage metrics as
//! OTLP metrics ([`metrics`]) and, with a sampling ratio, frames as traces
//! ([`traces`]), over HTTP with protobuf (`ENDPOINT/v1/metrics`,
//! `ENDPOINT/v1/traces`) through the `opentelemetry-otlp` exporter. A
//! collector that is down or slow never blocks tracing: delivery runs on
//! threads of its own behind bounded queues, with retries and backoff,
//! and what is lost is counted ([`export`]; `stats.outputs`,
//! `adeline_output_dropped_total`). Resource attributes: `service.name`,
//! `host.name`, and the traced processes' pid, container and pod when the
//! run traces known processes that share them (docs/fleet.md).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::{metrics::MeterProvider as _, KeyValue};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::SpanExporter as _,
    Resource,
};

use super::{
    sink::{Finish, Sink, SinkError, Span, Start},
    source::{OutputHealth, SnapshotSource},
};
use crate::container::ProcessInfo;

pub mod export;
pub mod metrics;
pub mod traces;

/// The default metric export interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The default deadline of one export, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans waiting to be sent at most (frames beyond are dropped, counted).
const MAX_QUEUED_SPANS: u64 = 16_384;
/// How often counters and gauges are refreshed from the agent's totals.
const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// A frame whose root has not returned after this long is given up.
const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// What `--otlp` and its settings ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSpec {
    /// `http://HOST:PORT` (no path: `/v1/metrics` and `/v1/traces` are added).
    pub endpoint: String,
    /// Metric export interval.
    pub interval: Duration,
    /// The deadline of one export request, retries included.
    pub timeout: Duration,
    /// Frames as traces: the share of frames sent (None: no traces).
    pub traces: Option<SampleRatio>,
    /// `service.name`.
    pub service_name: String,
    /// Histogram bucket bounds, increasing nanoseconds (`--prom-buckets`).
    pub bounds_ns: Vec<u64>,
}

/// A share in 0..=1 (validated by the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRatio(pub f64);

impl Eq for SampleRatio {}

/// Why an endpoint is not usable; None when it is.
pub fn check_endpoint(endpoint: &str) -> Option<&'static str> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Some(if endpoint.starts_with("https://") {
            "https is not supported: send to a local OpenTelemetry Collector over http"
        } else {
            "it must start with http://"
        });
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Some("no host");
    }
    if rest.trim_end_matches('/').contains('/') {
        return Some("give the base URL only, e.g. http://127.0.0.1:4318 (the agent adds /v1/metrics and /v1/traces)");
    }
    None
}

/// The OTLP output.
pub struct OtlpSink {
    spec: OtlpSpec,
    /// Built when tracing starts (the resource names the traced processes).
    running: Option<Running>,
    /// Exporters built at open (errors before anything is attached).
    exporters: Option<(
        opentelemetry_otlp::MetricExporter,
        Option<opentelemetry_otlp::SpanExporter>,
    )>,
    metric_counters: Arc<export::Counters>,
    trace_counters: Arc<export::Counters>,
    next_update: Instant,
}

struct Running {
    provider: SdkMeterProvider,
    instruments: metrics::Instruments,
    frames: Option<(traces::Frames, export::TraceQueue)>,
    /// Container and pod attributes of each known pid (root spans).
    process_attrs: HashMap<u32, Vec<KeyValue>>,
}

impl OtlpSink {
    /// Builds the exporters (checks the endpoint; nothing is sent yet).
    pub fn open(spec: &OtlpSpec) -> Result<OtlpSink, SinkError> {
        if let Some(why) = check_endpoint(&spec.endpoint) {
            return Err(SinkError::Otlp(format!(
                "invalid --otlp endpoint '{}': {why}",
                spec.endpoint
            )));
        }
        let base = spec.endpoint.trim_end_matches('/');
        let policy = || {
            RetryPolicy::recommended()
                .with_max_retries(3)
                .with_initial_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(1))
        };
        let build_error = |e: opentelemetry_otlp::ExporterBuildError| {
            SinkError::Otlp(format!("cannot build the OTLP exporter: {e}"))
        };
        let metric = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_timeout(spec.timeout)
            .with_retry_policy(policy())
            .build()
            .map_err(build_error)?;
        let span = match spec.traces {
            None => None,
            Some(_) => Some(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/traces"))
                    .with_timeout(spec.timeout)
                    .with_retry_policy(policy())
                    .build()
                    .map_err(build_error)?,
            ),
        };
        Ok(OtlpSink {
            spec: spec.clone(),
            running: None,
            exporters: Some((metric, span)),
            metric_counters: Arc::default(),
            trace_counters: Arc::default(),
            next_update: Instant::now(),
        })
    }

    fn begin(&mut self, start: &Start<'_>) -> Result<Running, SinkError> {
        let (metric, span) = self.exporters.take().expect("started once");
        let resource = resource(&self.spec.service_name, start.processes);
        let io = |e: std::io::Error| SinkError::Otlp(format!("cannot start OTLP export: {e}"));
        let guarded =
            export::GuardedMetrics::new(metric, self.spec.timeout, self.metric_counters.clone())
                .map_err(io)?;
        let reader = PeriodicReader::builder(guarded)
            .with_interval(self.spec.interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(reader)
            .build();
        let meter = provider.meter("adeline-trace");
        let bounds = self
            .spec
            .bounds_ns
            .iter()
            .map(|&b| b as f64 / 1e9)
            .collect();
        let instruments = metrics::Instruments::new(&meter, bounds);
        let frames = match (span, self.spec.traces) {
            (Some(mut exporter), Some(ratio)) => {
                exporter.set_resource(&resource);
                let queue = export::TraceQueue::start(
                    exporter,
                    MAX_QUEUED_SPANS,
                    self.spec.timeout,
                    self.trace_counters.clone(),
                )
                .map_err(io)?;
                Some((traces::Frames::new(ratio.0), queue))
            }
            _ => None,
        };
        let mut running = Running {
            provider,
            instruments,
            frames,
            process_attrs: HashMap::new(),
        };
        running.learn(start.processes);
        Ok(running)
    }
}

impl Running {
    fn learn(&mut self, processes: &[ProcessInfo]) {
        for p in processes {
            self.process_attrs.entry(p.pid).or_insert_with(|| {
                p.otel_attributes()
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect()
            });
        }
    }

    fn update(&mut self, source: &dyn SnapshotSource) {
        self.instruments.update(source);
        self.learn(&source.processes());
        if let Some((frames, _)) = self.frames.as_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            frames.expire(now, FRAME_TIMEOUT.as_nanos() as u64);
        }
    }
}

/// `service.name`, the host and, when every traced process shares them,
/// their pid (one process) and container and pod attributes. The SDK adds
/// `telemetry.sdk.*` and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource(service_name: &str, processes: &[ProcessInfo]) -> Resource {
    let mut attrs: Vec<KeyValue> = Vec::new();
    if let Some(host) = hostname() {
        attrs.push(KeyValue::new("host.name", host));
    }
    attrs.push(KeyValue::new("os.type", "linux"));
    if let [one] = processes {
        attrs.push(KeyValue::new("process.pid", i64::from(one.pid)));
    }
    if let Some((first, rest)) = processes.split_first() {
        let shared = first.otel_attributes();
        if rest.iter().all(|p| p.otel_attributes() == shared) {
            attrs.extend(shared.into_iter().map(|(k, v)| KeyValue::new(k, v)));
        }
    }
    Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attributes(attrs)
        .build()
}

/// This host's name (uname's nodename).
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

impl Sink for OtlpSink {
    fn start(&mut self, start: &Start<'_>) -> Result<(), SinkError> {
        self.running = Some(self.begin(start)?);
        Ok(())
    }

    fn span(&mut self, span: &Span<'_>) -> Result<(), SinkError> {
        let Some(r) = self.running.as_mut() else {
            return Ok(());
        };
        let rec = span.record;
        r.instruments.call(span.stage, rec.dur_ns, span.frame_root);
        let (Some((frames, queue)), Some(frame_ns)) = (r.frames.as_mut(), span.frame_ts_ns) else {
            return Ok(());
        };
        let call = traces::Call {
            stage: span.stage.to_string(),
            start_ns: span.ts_ns,
            dur_ns: rec.dur_ns,
            self_ns: rec.self_ns,
            depth: rec.depth,
        };
        let attrs = r
            .process_attrs
            .get(&rec.pid)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let before = frames.dropped;
        if let Some(frame) = frames.call(rec.pid, rec.tid, frame_ns, call, span.frame_root, attrs) {
            queue.push(frame);
        }
        let lost = frames.dropped - before;
        if lost > 0 {
            self.trace_counters
                .dropped
                .fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn health(&self) -> Vec<OutputHealth> {
        let mut h = vec![self.metric_counters.health("otlp_metrics")];
        if self.spec.traces.is_some() {
            h.push(self.trace_counters.health("otlp_traces"));
        }
        h
    }

    fn next_tick(&self) -> Option<Instant> {
        self.running.as_ref().map(|_| self.next_update)
    }

    fn tick(&mut self, source: &dyn SnapshotSource) -> Result<(), SinkError> {
        self.next_update = Instant::now() + UPDATE_EVERY;
        if let Some(r) = self.running.as_mut() {
            r.update(source);
        }
        Ok(())
    }

    /// The last totals, then one last export of each signal (bounded by
    /// the export deadline).
    fn finish(&mut self, _: &Finish<'_>, source: &dyn SnapshotSource) -> Result<(), SinkError> {
        let Some(mut r) = self.running.take() else {
            return Ok(());
        };
        r.update(source);
        if let Some((_, mut queue)) = r.frames.take() {
            queue.finish();
        }
        // The reader's shutdown collects and exports once more.
        let _ = r.provider.shutdown();
        Ok(())
    }
}
