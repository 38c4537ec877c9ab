//! An OTLP/HTTP receiver for the tests: accepts `POST /v1/metrics` and
//! `POST /v1/traces` on a free loopback port and decodes each body with the
//! upstream OTLP protobuf definitions (`opentelemetry-proto`'s prost
//! types). It can answer slowly (a collector under load).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use prost::Message;

pub use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, KeyValue},
    metrics::v1::{metric, number_data_point, HistogramDataPoint, Metric, NumberDataPoint},
    resource::v1::Resource,
    trace::v1::Span as OtlpSpan,
};

#[derive(Default)]
struct Received {
    metrics: Vec<ExportMetricsServiceRequest>,
    traces: Vec<ExportTraceServiceRequest>,
    /// Requests for other paths, or bodies that did not decode.
    bad: Vec<String>,
}

/// A receiver on 127.0.0.1; stops when dropped.
pub struct OtlpReceiver {
    pub port: u16,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
}

impl OtlpReceiver {
    /// Answers every request at once.
    pub fn start() -> OtlpReceiver {
        OtlpReceiver::with_delay(Duration::ZERO)
    }

    /// Answers every request `delay` after reading it.
    pub fn with_delay(delay: Duration) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the receiver");
        listener.set_nonblocking(true).expect("nonblocking accept");
        let port = listener.local_addr().expect("local addr").port();
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (r, s) = (r.clone(), s.clone());
                        std::thread::spawn(move || serve(conn, r, s, delay));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        OtlpReceiver {
            port,
            received,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every metrics request so far.
    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.lock().metrics.clone()
    }

    /// Every traces request so far.
    pub fn traces(&self) -> Vec<ExportTraceServiceRequest> {
        self.lock().traces.clone()
    }

    /// Requests that were not OTLP (should be none).
    pub fn bad(&self) -> Vec<String> {
        self.lock().bad.clone()
    }

    /// Waits up to `timeout` for a metrics request satisfying `pred`.
    pub fn wait_metrics(
        &self,
        timeout: Duration,
        pred: impl Fn(&ExportMetricsServiceRequest) -> bool,
    ) -> Option<ExportMetricsServiceRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.lock().metrics.iter().rev().find(|m| pred(m)) {
                return Some(m.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one connection: HTTP/1.1 requests with a Content-Length body,
/// kept alive until the client closes it.
fn serve(conn: TcpStream, received: Arc<Mutex<Received>>, stop: Arc<AtomicBool>, delay: Duration) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    while !stop.load(Ordering::Relaxed) {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        std::thread::sleep(delay);
        {
            let mut r = received.lock().unwrap_or_else(|e| e.into_inner());
            match path.as_str() {
                "/v1/metrics" => match ExportMetricsServiceRequest::decode(body.as_slice()) {
                    Ok(m) => r.metrics.push(m),
                    Err(e) => r.bad.push(format!("{path}: {e}")),
                },
                "/v1/traces" => match ExportTraceServiceRequest::decode(body.as_slice()) {
                    Ok(t) => r.traces.push(t),
                    Err(e) => r.bad.push(format!("{path}: {e}")),
                },
                other => r.bad.push(format!("unexpected path {other}")),
            }
        }
        let response =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// The string, int or double value of an attribute.
pub fn attr_value(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value of attribute `key`.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| attr_value(&kv.value))
}

/// Every metric named `name` in a request, with its resource.
pub fn metrics_named<'a>(
    req: &'a ExportMetricsServiceRequest,
    name: &str,
) -> Vec<(&'a Option<Resource>, &'a Metric)> {
    req.resource_metrics
        .iter()
        .flat_map(|rm| {
            rm.scope_metrics
                .iter()
                .flat_map(|sm| sm.metrics.iter())
                .filter(|m| m.name == name)
                .map(move |m| (&rm.resource, m))
        })
        .collect()
}

/// The histogram points of metric `name`, by their `stage` attribute (or
/// "" without one).
pub fn histogram_points<'a>(
    req: &'a ExportMetricsServiceRequest,
    name: &str,
) -> Vec<(String, &'a HistogramDataPoint)> {
    metrics_named(req, name)
        .into_iter()
        .filter_map(|(_, m)| match &m.data {
            Some(metric::Data::Histogram(h)) => Some(h.data_points.iter()),
            _ => None,
        })
        .flatten()
        .map(|p| (attr(&p.attributes, "stage").unwrap_or_default(), p))
        .collect()
}

/// The sum or gauge points of metric `name`: (attributes, value as f64).
pub fn number_points<'a>(
    req: &'a ExportMetricsServiceRequest,
    name: &str,
) -> Vec<(&'a [KeyValue], f64)> {
    metrics_named(req, name)
        .into_iter()
        .flat_map(|(_, m)| match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.iter().collect::<Vec<_>>(),
            Some(metric::Data::Gauge(g)) => g.data_points.iter().collect(),
            _ => Vec::new(),
        })
        .map(|p: &NumberDataPoint| {
            let v = match p.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                None => f64::NAN,
            };
            (p.attributes.as_slice(), v)
        })
        .collect()
}

/// Every span received, with its resource's attributes.
pub fn all_spans(traces: &[ExportTraceServiceRequest]) -> Vec<(&[KeyValue], &OtlpSpan)> {
    traces
        .iter()
        .flat_map(|t| t.resource_spans.iter())
        .flat_map(|rs| {
            let attrs = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            rs.scope_spans
                .iter()
                .flat_map(|ss| ss.spans.iter())
                .map(move |s| (attrs, s))
        })
        .collect()
}
