//! `run --trace-out FILE`: spans in the Chrome trace-event format (the JSON
//! array form), which Perfetto and chrome://tracing open as a timeline: one
//! track per thread, complete events ("ph":"X") named after their stage,
//! frame-root calls in category `frame`, the others in `stage`.
//!
//! The array is written as spans arrive; the closing `]` and the thread
//! names are added at the end. A file cut short (agent killed) still loads:
//! the array format allows a missing `]`.
use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use adeline_trace_common::SpanRecord;
use serde::Serialize;

use super::{
    sink::{Finish, Sink, SinkError, Span},
    source::SnapshotSource,
};

pub struct TraceOut {
    out: BufWriter<File>,
    /// Monotonic ns that maps to ts 0.
    origin_ns: u64,
    first: bool,
    threads: BTreeSet<(u32, u32)>,
    closed: bool,
}

#[derive(Serialize)]
struct Complete<'a> {
    name: &'a str,
    cat: &'static str,
    ph: &'static str,
    /// Microseconds since the trace origin.
    ts: f64,
    dur: f64,
    pid: u32,
    tid: u32,
    args: Args,
}

#[derive(Serialize)]
struct Args {
    depth: u32,
    self_us: f64,
}

#[derive(Serialize)]
struct Meta<'a> {
    name: &'static str,
    ph: &'static str,
    pid: u32,
    tid: u32,
    args: MetaName<'a>,
}

#[derive(Serialize)]
struct MetaName<'a> {
    name: &'a str,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl TraceOut {
    /// Creates the file; times are relative to `origin_ns` (monotonic).
    pub fn create(path: &Path, origin_ns: u64) -> Result<TraceOut, SinkError> {
        let created = File::create(path).and_then(|file| {
            let mut out = BufWriter::new(file);
            out.write_all(b"[\n")?;
            Ok(out)
        });
        let out = created.map_err(|source| SinkError::Create {
            what: "the trace file",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(TraceOut {
            out,
            origin_ns,
            first: true,
            threads: BTreeSet::new(),
            closed: false,
        })
    }

    fn event(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, value)?;
        Ok(())
    }

    /// One completed call; `frame` marks a frame-root call.
    pub fn span(&mut self, span: &SpanRecord, stage: &str, frame: bool) -> std::io::Result<()> {
        self.threads.insert((span.pid, span.tid));
        self.event(&Complete {
            name: stage,
            cat: if frame { "frame" } else { "stage" },
            ph: "X",
            ts: us(span.start_ns.saturating_sub(self.origin_ns)),
            dur: us(span.dur_ns),
            pid: span.pid,
            tid: span.tid,
            args: Args {
                depth: span.depth,
                self_us: us(span.self_ns),
            },
        })
    }

    /// Names every process and thread seen, closes the array, flushes
    /// (once; later calls do nothing).
    pub fn close(&mut self) -> std::io::Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        let threads = std::mem::take(&mut self.threads);
        let pids: BTreeSet<u32> = threads.iter().map(|&(p, _)| p).collect();
        for pid in pids {
            let name = format!("pid {pid}");
            self.event(&Meta {
                name: "process_name",
                ph: "M",
                pid,
                tid: 0,
                args: MetaName { name: &name },
            })?;
        }
        for (pid, tid) in threads {
            let name = format!("thread {tid}");
            self.event(&Meta {
                name: "thread_name",
                ph: "M",
                pid,
                tid,
                args: MetaName { name: &name },
            })?;
        }
        self.out.write_all(b"\n]\n")?;
        self.out.flush()
    }

    /// Writes what is buffered (so a reader sees spans while tracing).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Sink for TraceOut {
    fn span(&mut self, span: &Span<'_>) -> Result<(), SinkError> {
        TraceOut::span(self, span.record, span.stage, span.frame_root)
            .map_err(SinkError::write("the trace file"))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        TraceOut::flush(self).map_err(SinkError::write("the trace file"))
    }

    fn finish(&mut self, _: &Finish<'_>, _: &dyn SnapshotSource) -> Result<(), SinkError> {
        self.close().map_err(SinkError::write("the trace file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_valid_trace_with_tracks_and_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let mut t = TraceOut::create(&path, 1_000).unwrap();
        let span = |tid, start_ns, dur_ns, depth| SpanRecord {
            pid: 7,
            tid,
            start_ns,
            dur_ns,
            self_ns: dur_ns / 2,
            depth,
            ..Default::default()
        };
        t.span(&span(8, 1_000, 10_000, 0), "process_frame", true)
            .unwrap();
        t.span(&span(8, 2_000, 3_000, 1), "decode", false).unwrap();
        t.span(&span(9, 4_500, 1_500, 0), "decode", false).unwrap();
        t.close().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let events = v.as_array().unwrap();
        let x: Vec<_> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(x.len(), 3);
        assert_eq!(x[0]["cat"], "frame");
        assert_eq!(x[0]["ts"], 0.0);
        assert_eq!(x[0]["dur"], 10.0);
        assert_eq!(x[1]["ts"], 1.0);
        assert_eq!(x[1]["args"]["self_us"], 1.5);
        assert_eq!(x[2]["tid"], 9);
        let threads: Vec<_> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["tid"].as_u64().unwrap())
            .collect();
        assert_eq!(threads, [8, 9]);
        assert_eq!(
            events
                .iter()
                .filter(|e| e["name"] == "process_name")
                .count(),
            1
        );
    }
}
