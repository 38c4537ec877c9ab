//! JSON Lines event stream (schema: docs/events.md, version [`SCHEMA_VERSION`]).
use std::io::Write;

use serde::Serialize;

use crate::metrics::LatencySummary;

/// Version of the JSON event schema (`v` field of every object).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct ProbeInfo<'a> {
    pub stage: &'a str,
    pub target: String,
    pub symbol: &'a str,
    pub offset: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    Start {
        ts_ns: u64,
        pids: &'a [u32],
        probes: Vec<ProbeInfo<'a>>,
    },
    Span {
        ts_ns: u64,
        pid: u32,
        tid: u32,
        stage: &'a str,
        dur_ns: u64,
        depth: u32,
    },
    Stats {
        ts_ns: u64,
        interval_ns: u64,
        events: u64,
        drops: u64,
        events_total: u64,
        drops_total: u64,
        unmatched_total: u64,
        depth_overflow_total: u64,
        filtered_total: u64,
    },
    Summary {
        ts_ns: u64,
        duration_ns: u64,
        events: u64,
        drops: u64,
        stages: Vec<StageSummary<'a>>,
    },
}

#[derive(Serialize)]
pub struct StageSummary<'a> {
    pub stage: &'a str,
    #[serde(flatten)]
    pub latency: LatencySummary,
}

#[derive(Serialize)]
struct Versioned<'a> {
    v: u32,
    #[serde(flatten)]
    record: &'a Record<'a>,
}

/// Writes one JSON object per line.
pub struct JsonlSink {
    out: Box<dyn Write + Send>,
}

impl JsonlSink {
    pub fn new(out: Box<dyn Write + Send>) -> JsonlSink {
        JsonlSink { out }
    }

    pub fn write(&mut self, record: &Record<'_>) -> std::io::Result<()> {
        serde_json::to_writer(
            &mut self.out,
            &Versioned {
                v: SCHEMA_VERSION,
                record,
            },
        )?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn span_line_has_version_and_type() {
        let buf = Buf::default();
        let mut sink = JsonlSink::new(Box::new(buf.clone()));
        sink.write(&Record::Span {
            ts_ns: 1,
            pid: 2,
            tid: 3,
            stage: "infer",
            dur_ns: 4,
            depth: 0,
        })
        .unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "{\"v\":1,\"type\":\"span\",\"ts_ns\":1,\"pid\":2,\"tid\":3,\"stage\":\"infer\",\"dur_ns\":4,\"depth\":0}\n"
        );
    }
}
