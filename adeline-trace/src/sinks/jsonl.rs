//! JSON Lines event stream (schema: docs/events.md, version [`SCHEMA_VERSION`]).
use std::io::Write;

use serde::Serialize;

use crate::{
    alerts::AlertEvent,
    metrics::{
        snapshot::{AllocReport, AllocSite, HostStats, ProcessMemory, StageMemory},
        LatencySummary,
    },
};

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
        /// dur_ns minus the traced calls made directly inside.
        self_ns: u64,
        depth: u32,
        /// Wall-clock start of the frame this call belongs to (absent outside frames).
        #[serde(skip_serializing_if = "Option::is_none")]
        frame_ts_ns: Option<u64>,
        /// Python stages: the call ended with an exception.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        error: bool,
        /// Python stages: a generator or coroutine (start to final return;
        /// self_ns = its active time minus its children).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        generator: bool,
    },
    /// Memory every stats interval: the traced processes' RSS and growth
    /// (10 s) and CPU use, per-stage mmap/munmap bytes (whole run), and the
    /// host's CPU, memory and GPUs (absent before two samples).
    Memory {
        ts_ns: u64,
        processes: &'a [ProcessMemory],
        stages: &'a [StageMemory],
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<&'a HostStats>,
        /// Alloc mode (its `sites` go out as `alloc_site` objects).
        #[serde(skip_serializing_if = "Option::is_none")]
        alloc: Option<&'a AllocReport>,
    },
    /// Alloc mode, every few seconds: one of the largest outstanding sites.
    AllocSite {
        ts_ns: u64,
        /// 1 = the largest.
        rank: usize,
        #[serde(flatten)]
        site: &'a AllocSite,
    },
    /// An alert transition (fields of [`AlertEvent`]).
    Alert(&'a AlertEvent),
    Gauge {
        ts_ns: u64,
        pid: u32,
        tid: u32,
        gauge: &'a str,
        value: i64,
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
        /// Records of every kind read / lost (ring full).
        events: u64,
        drops: u64,
        /// Of them, spans read / spans lost.
        spans: u64,
        span_drops: u64,
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

/// Largest write that a pipe keeps whole when others write to it too.
const PIPE_BUF: usize = 4096;

/// Writes one JSON object per line. Output is buffered here and written in
/// chunks of whole lines of at most PIPE_BUF bytes, so a process sharing the
/// same pipe (a command launched with `--`) can never split a record.
pub struct JsonlSink {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl JsonlSink {
    /// `out` should be unbuffered (e.g. a `File`): this sink buffers.
    pub fn new(out: Box<dyn Write + Send>) -> JsonlSink {
        JsonlSink {
            out,
            buf: Vec::with_capacity(4 * PIPE_BUF),
        }
    }

    pub fn write(&mut self, record: &Record<'_>) -> std::io::Result<()> {
        serde_json::to_writer(
            &mut self.buf,
            &Versioned {
                v: SCHEMA_VERSION,
                record,
            },
        )?;
        self.buf.push(b'\n');
        if self.buf.len() >= 4 * PIPE_BUF {
            self.write_lines()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.write_lines()?;
        self.out.flush()
    }

    /// Writes the buffer (whole lines only) in chunks of at most PIPE_BUF
    /// bytes, each ending at a newline; a longer line goes alone.
    fn write_lines(&mut self) -> std::io::Result<()> {
        let mut start = 0;
        while start < self.buf.len() {
            let window = &self.buf[start..self.buf.len().min(start + PIPE_BUF)];
            let end = match window.iter().rposition(|&b| b == b'\n') {
                Some(i) => start + i + 1,
                None => match self.buf[start..].iter().position(|&b| b == b'\n') {
                    Some(i) => start + i + 1,
                    None => self.buf.len(),
                },
            };
            self.out.write_all(&self.buf[start..end])?;
            start = end;
        }
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the bytes and the size of every write.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>, Arc<Mutex<Vec<usize>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            self.1.lock().unwrap().push(b.len());
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
            self_ns: 3,
            depth: 0,
            frame_ts_ns: None,
            error: false,
            generator: false,
        })
        .unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "{\"v\":1,\"type\":\"span\",\"ts_ns\":1,\"pid\":2,\"tid\":3,\"stage\":\"infer\",\"dur_ns\":4,\"self_ns\":3,\"depth\":0}\n"
        );
    }

    #[test]
    fn writes_whole_lines_of_at_most_pipe_buf_bytes() {
        let buf = Buf::default();
        let mut sink = JsonlSink::new(Box::new(buf.clone()));
        for i in 0..1000 {
            sink.write(&Record::Span {
                ts_ns: i,
                pid: 2,
                tid: 3,
                stage: "infer",
                dur_ns: 4,
                self_ns: 4,
                depth: 0,
                frame_ts_ns: Some(1),
                error: false,
                generator: false,
            })
            .unwrap();
        }
        sink.flush().unwrap();
        let bytes = buf.0.lock().unwrap().clone();
        let writes = buf.1.lock().unwrap().clone();
        assert_eq!(String::from_utf8(bytes).unwrap().lines().count(), 1000);
        assert!(writes.iter().all(|&n| n <= PIPE_BUF), "{writes:?}");
        let mut at = 0;
        let all = buf.0.lock().unwrap().clone();
        for n in writes {
            at += n;
            assert_eq!(all[at - 1], b'\n', "a write ended mid-line");
        }
    }

    #[test]
    fn alert_line_flattens_the_event() {
        let buf = Buf::default();
        let mut sink = JsonlSink::new(Box::new(buf.clone()));
        let event = AlertEvent {
            state: crate::alerts::AlertState::Firing,
            rule: "fps < 25 for 10s".into(),
            value: 12.5,
            threshold: 25.0,
            since_ns: 1,
            ts_ns: 2,
        };
        sink.write(&Record::Alert(&event)).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "{\"v\":1,\"type\":\"alert\",\"state\":\"firing\",\"rule\":\"fps < 25 for 10s\",\"value\":12.5,\"threshold\":25.0,\"since_ns\":1,\"ts_ns\":2}\n"
        );
    }
}
