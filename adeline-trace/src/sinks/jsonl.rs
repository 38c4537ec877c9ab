//! The JSON Lines event stream (`-o`; schema: docs/events.md, version
//! [`SCHEMA_VERSION`]): one object per record, written whole lines at a time.
use std::{fs::File, io::Write, os::fd::AsFd, path::PathBuf};

use adeline_trace_common::{SPAN_FLAG_ERROR, SPAN_FLAG_EXCEPTION, SPAN_FLAG_GENERATOR};
use serde::Serialize;

use super::{
    sink::{
        Attach, Finish, Gauge, Memory, RankedSite, Reload, Sink, SinkError, Span, Start, Stats,
    },
    source::SnapshotSource,
};
use crate::{alerts::AlertEvent, events::SCHEMA_VERSION};

/// Where JSON Lines events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

/// One line of the stream: its `type` and fields.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Record<'a> {
    Start(&'a Start<'a>),
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
        /// The call did not return: an exception unwound it (present only then).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        exception: bool,
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
    Memory(&'a Memory<'a>),
    /// Alloc mode, every few seconds: one of the largest outstanding sites.
    AllocSite(&'a RankedSite<'a>),
    /// An alert transition (fields of [`AlertEvent`]).
    Alert(&'a AlertEvent),
    /// Probes attached, or a process joined (docs/follow.md).
    Attach(&'a Attach),
    /// A reloaded config (SIGHUP).
    Reload(&'a Reload),
    Gauge {
        ts_ns: u64,
        pid: u32,
        tid: u32,
        gauge: &'a str,
        value: i64,
    },
    Stats(&'a Stats<'a>),
    Summary(&'a Finish<'a>),
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
    /// Write a `span` line per call.
    spans: bool,
    /// The output is a pipe whose reader went away: nothing more is written.
    closed: bool,
}

impl JsonlSink {
    /// Opens `output`: a file (created or truncated) or a copy of stdout.
    pub fn open(output: &Output, spans: bool) -> Result<JsonlSink, SinkError> {
        let out: Box<dyn Write + Send> = match output {
            // Unbuffered: this sink buffers and writes whole lines itself.
            Output::Stdout => Box::new(File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(SinkError::Stdout)?,
            )),
            Output::File(path) => {
                Box::new(File::create(path).map_err(|source| SinkError::Create {
                    what: "output",
                    path: path.clone(),
                    source,
                })?)
            }
        };
        Ok(JsonlSink::new(out, spans))
    }

    /// `out` should be unbuffered (e.g. a `File`): this sink buffers.
    pub fn new(out: Box<dyn Write + Send>, spans: bool) -> JsonlSink {
        JsonlSink {
            out,
            buf: Vec::with_capacity(4 * PIPE_BUF),
            spans,
            closed: false,
        }
    }

    fn write(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
        if self.closed {
            return Ok(());
        }
        let result = self.put(record);
        self.outcome(result)
    }

    /// A write's result. A broken pipe (the reader of the stream exited,
    /// e.g. `| head`) is reported once as [`SinkError::Closed`], which
    /// stops the run cleanly; every later record is dropped.
    fn outcome(&mut self, result: std::io::Result<()>) -> Result<(), SinkError> {
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                self.buf = Vec::new();
                Err(SinkError::Closed { what: "the events" })
            }
            result => result.map_err(SinkError::write("the events")),
        }
    }

    fn put(&mut self, record: &Record<'_>) -> std::io::Result<()> {
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

    fn write_out(&mut self) -> std::io::Result<()> {
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

impl Sink for JsonlSink {
    fn start(&mut self, start: &Start<'_>) -> Result<(), SinkError> {
        self.write(&Record::Start(start))?;
        self.flush()
    }

    fn span(&mut self, span: &Span<'_>) -> Result<(), SinkError> {
        if !self.spans {
            return Ok(());
        }
        let r = span.record;
        self.write(&Record::Span {
            ts_ns: span.ts_ns,
            pid: r.pid,
            tid: r.tid,
            stage: span.stage,
            dur_ns: r.dur_ns,
            self_ns: r.self_ns,
            depth: r.depth,
            frame_ts_ns: span.frame_ts_ns,
            exception: r.flags & SPAN_FLAG_EXCEPTION != 0,
            error: r.flags & SPAN_FLAG_ERROR != 0,
            generator: r.flags & SPAN_FLAG_GENERATOR != 0,
        })
    }

    fn gauge(&mut self, gauge: &Gauge<'_>) -> Result<(), SinkError> {
        self.write(&Record::Gauge {
            ts_ns: gauge.ts_ns,
            pid: gauge.record.pid,
            tid: gauge.record.tid,
            gauge: gauge.gauge,
            value: gauge.record.value,
        })
    }

    fn stats(&mut self, stats: &Stats<'_>) -> Result<(), SinkError> {
        self.write(&Record::Stats(stats))?;
        self.flush()
    }

    fn memory(&mut self, memory: &Memory<'_>) -> Result<(), SinkError> {
        if memory.is_empty() {
            return Ok(());
        }
        self.write(&Record::Memory(memory))
    }

    fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        self.write(&Record::Alert(event))
    }

    fn alloc_site(&mut self, site: &RankedSite<'_>) -> Result<(), SinkError> {
        self.write(&Record::AllocSite(site))
    }

    fn attach(&mut self, attach: &Attach) -> Result<(), SinkError> {
        self.write(&Record::Attach(attach))?;
        self.flush()
    }

    fn reload(&mut self, reload: &Reload) -> Result<(), SinkError> {
        self.write(&Record::Reload(reload))?;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.closed {
            return Ok(());
        }
        let result = self.write_out();
        self.outcome(result)
    }

    fn finish(&mut self, finish: &Finish<'_>, _: &dyn SnapshotSource) -> Result<(), SinkError> {
        self.write(&Record::Summary(finish))?;
        self.flush()
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
        let mut sink = JsonlSink::new(Box::new(buf.clone()), true);
        sink.write(&Record::Span {
            ts_ns: 1,
            pid: 2,
            tid: 3,
            stage: "infer",
            dur_ns: 4,
            self_ns: 3,
            depth: 0,
            frame_ts_ns: None,
            exception: false,
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
        sink.write(&Record::Span {
            ts_ns: 1,
            pid: 2,
            tid: 3,
            stage: "infer",
            dur_ns: 4,
            self_ns: 3,
            depth: 0,
            frame_ts_ns: None,
            exception: true,
            error: false,
            generator: false,
        })
        .unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.ends_with(",\"depth\":0,\"exception\":true}\n"),
            "{text}"
        );
    }

    #[test]
    fn writes_whole_lines_of_at_most_pipe_buf_bytes() {
        let buf = Buf::default();
        let mut sink = JsonlSink::new(Box::new(buf.clone()), true);
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
                exception: false,
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
        let mut sink = JsonlSink::new(Box::new(buf.clone()), true);
        let event = AlertEvent {
            state: crate::alerts::AlertState::Firing,
            rule: "fps < 25 for 10s".into(),
            value: 12.5,
            threshold: 25.0,
            since_ns: 1,
            ts_ns: 2,
            profile: None,
        };
        sink.write(&Record::Alert(&event)).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "{\"v\":1,\"type\":\"alert\",\"state\":\"firing\",\"rule\":\"fps < 25 for 10s\",\"value\":12.5,\"threshold\":25.0,\"since_ns\":1,\"ts_ns\":2}\n"
        );
    }

    #[test]
    fn without_spans_only_other_records_and_no_empty_memory() {
        use adeline_trace_common::{GaugeRecord, SpanRecord};
        let buf = Buf::default();
        let mut sink = JsonlSink::new(Box::new(buf.clone()), false);
        let span = SpanRecord::default();
        sink.span(&Span {
            record: &span,
            stage: "infer",
            ts_ns: 1,
            frame_ts_ns: None,
            frame_root: false,
        })
        .unwrap();
        let gauge = GaugeRecord {
            pid: 2,
            tid: 3,
            value: -5,
            ..Default::default()
        };
        sink.gauge(&Gauge {
            record: &gauge,
            gauge: "queue",
            ts_ns: 4,
        })
        .unwrap();
        sink.memory(&Memory {
            ts_ns: 5,
            processes: &[],
            stages: &[],
            host: None,
            alloc: None,
        })
        .unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "{\"v\":1,\"type\":\"gauge\",\"ts_ns\":4,\"pid\":2,\"tid\":3,\"gauge\":\"queue\",\"value\":-5}\n"
        );
    }
}
