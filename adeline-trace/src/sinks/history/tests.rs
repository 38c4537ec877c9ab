//! The history store: schema, record and query, retention, readers beside
//! a writer (other connections, a killed writer process), bad files, and
//! `GET /api/history` through the real API server.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rusqlite::Connection;
use serde_json::Value;

use super::*;
use crate::{
    alerts::{AlertEvent, AlertState},
    metrics::snapshot::{
        Bottleneck, FrameStats, Percentiles, Snapshot, StageStats, Window, SNAPSHOT_VERSION,
    },
};

const SEC: u64 = 1_000_000_000;
/// A wall-clock time to count from (2023-11-14).
const T0: u64 = 1_700_000_000 * SEC;
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
const STAGES: [&str; 3] = ["frame", "infer", "track"];

/// Rows of `stage` (all with None) from `since_ns` on, read as the
/// `history` command and the API read them.
fn query(path: &Path, stage: Option<&str>, since_ns: u64) -> Result<Vec<HistoryRow>, HistoryError> {
    HistoryReader::open(path)?.rows(stage, since_ns)
}

/// An interval of 10 s ending at `ts_ns`: `count` calls of each stage
/// (stage i: `(i + 1) * count`), with frames when `frames`.
fn snapshot(ts_ns: u64, count: u64, frames: bool) -> Snapshot {
    let stages = STAGES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = count * (i as u64 + 1);
            let ms = (i as u64 + 1) * 1_000_000;
            StageStats {
                stage: name.to_string(),
                rate_hz: n as f64 / 10.0,
                latency: Percentiles {
                    count: n,
                    min_ns: ms / 2,
                    mean_ns: ms,
                    p50_ns: ms,
                    p90_ns: ms * 2,
                    p95_ns: ms * 3,
                    p99_ns: ms * 4,
                    p999_ns: ms * 5,
                    max_ns: ms * 6,
                },
                total_ns: n * ms,
                self_ns: n * ms / 2,
                frame_share: frames.then_some(0.25 * (i as f64 + 1.0)),
            }
        })
        .collect();
    Snapshot {
        v: SNAPSHOT_VERSION,
        ts_ns,
        window: Window::S10,
        window_ns: 10 * SEC,
        stages,
        frames: frames.then(|| FrameStats {
            root: "frame".into(),
            fps: count as f64 / 10.0,
            latency: Percentiles {
                count,
                p50_ns: 7_000_000,
                p95_ns: 8_000_000,
                p99_ns: 9_000_000,
                max_ns: 10_000_000,
                ..Percentiles::default()
            },
        }),
        gauges: vec![],
        bottleneck: Bottleneck::default(),
        events: count * 10,
        drops: 0,
        memory: vec![],
        stage_memory: vec![],
        alloc: None,
        host: None,
        processes: Vec::new(),
    }
}

fn alert(rule: &str, state: AlertState, ts_ns: u64) -> AlertEvent {
    AlertEvent {
        state,
        rule: rule.into(),
        value: 31e6,
        threshold: 30e6,
        since_ns: ts_ns - 5 * SEC,
        ts_ns,
        profile: None,
    }
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("sub/dir/history.db")
}

#[test]
fn open_creates_the_directory_and_the_schema_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let store = HistoryStore::open(&path, WEEK).unwrap();
    assert_eq!(store.path(), path);
    let conn = Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    assert_eq!(tables, ["alerts", "intervals", "stages"]);
    drop(store);
    // Reopening keeps what is there.
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    store.record(&snapshot(T0, 10, true), &[]).unwrap();
    drop(store);
    let store = HistoryStore::open(&path, WEEK).unwrap();
    drop(store);
    assert_eq!(query(&path, None, 0).unwrap().len(), 3);
}

#[test]
fn records_one_row_per_stage_with_its_interval_and_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    store.record(&snapshot(T0, 100, true), &[]).unwrap();
    store
        .record(&snapshot(T0 + 10 * SEC, 200, false), &[])
        .unwrap();

    let rows = query(&path, None, 0).unwrap();
    let names: Vec<(u64, &str)> = rows
        .iter()
        .map(|r| (r.ts_ns, r.stats.stage.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (T0, "frame"),
            (T0, "infer"),
            (T0, "track"),
            (T0 + 10 * SEC, "frame"),
            (T0 + 10 * SEC, "infer"),
            (T0 + 10 * SEC, "track"),
        ],
        "oldest first, plan order within an interval"
    );
    let infer = &rows[1];
    assert_eq!(
        *infer,
        HistoryRow {
            ts_ns: T0,
            interval_ns: 10 * SEC,
            stats: StageStats {
                stage: "infer".into(),
                rate_hz: 20.0,
                latency: Percentiles {
                    count: 200,
                    min_ns: 1_000_000,
                    mean_ns: 2_000_000,
                    p50_ns: 2_000_000,
                    p90_ns: 4_000_000,
                    p95_ns: 6_000_000,
                    p99_ns: 8_000_000,
                    p999_ns: 10_000_000,
                    max_ns: 12_000_000,
                },
                total_ns: 400_000_000,
                self_ns: 200_000_000,
                frame_share: Some(0.5),
            },
            fps: Some(10.0),
            frame_count: Some(100),
            frame_p50_ns: Some(7_000_000),
            frame_p95_ns: Some(8_000_000),
            frame_p99_ns: Some(9_000_000),
            frame_max_ns: Some(10_000_000),
            rss_bytes: None,
            rss_growth_bytes_per_s: None,
        }
    );
    // Without frames: nulls, not zeros.
    let later = &rows[4];
    assert_eq!(later.stats.latency.count, 400);
    assert_eq!(
        (later.stats.frame_share, later.fps, later.frame_count),
        (None, None, None)
    );
    let json = serde_json::to_value(later).unwrap();
    assert_eq!(json["fps"], Value::Null);
    assert_eq!(json["frame_p99_ns"], Value::Null);
}

#[test]
fn query_by_stage_and_since() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    for i in 0..6 {
        store
            .record(&snapshot(T0 + i * 10 * SEC, 10 + i, true), &[])
            .unwrap();
    }
    let track = query(&path, Some("track"), 0).unwrap();
    assert_eq!(track.len(), 6);
    assert!(track.iter().all(|r| r.stats.stage == "track"));
    assert_eq!(track[5].stats.latency.count, 3 * 15);

    let recent = query(&path, None, T0 + 40 * SEC).unwrap();
    assert_eq!(recent.len(), 2 * 3, "intervals ending at 40 s and 50 s");
    assert!(recent.iter().all(|r| r.ts_ns >= T0 + 40 * SEC));
    let one = query(&path, Some("infer"), T0 + 50 * SEC).unwrap();
    assert_eq!(one.len(), 1);
    assert!(query(&path, Some("nope"), 0).unwrap().is_empty());
    assert!(query(&path, None, T0 + 51 * SEC).unwrap().is_empty());

    let reader = HistoryReader::open(&path).unwrap();
    assert_eq!(reader.stages().unwrap(), STAGES);
    assert_eq!(reader.newest_ns().unwrap(), Some(T0 + 50 * SEC));
}

#[test]
fn the_traced_processes_memory_is_kept_per_interval_summed() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    let mut snap = snapshot(T0, 10, true);
    snap.memory = vec![
        crate::metrics::snapshot::ProcessMemory {
            pid: 1,
            rss_bytes: 100_000_000,
            growth_bytes_per_s: Some(1_000.0),
            samples: 10,
            threads: 2,
            cpu_percent: None,
            rss_source: Default::default(),
        },
        crate::metrics::snapshot::ProcessMemory {
            pid: 2,
            rss_bytes: 50_000_000,
            growth_bytes_per_s: None,
            samples: 1,
            threads: 1,
            cpu_percent: None,
            rss_source: Default::default(),
        },
    ];
    store.record(&snap, &[]).unwrap();
    store
        .record(&snapshot(T0 + 10 * SEC, 10, true), &[])
        .unwrap();
    let rows = query(&path, Some("frame"), 0).unwrap();
    assert_eq!(rows[0].rss_bytes, Some(150_000_000));
    assert_eq!(rows[0].rss_growth_bytes_per_s, Some(1_000.0));
    assert_eq!(rows[1].rss_bytes, None, "not sampled: null, not 0");
    assert_eq!(rows[1].rss_growth_bytes_per_s, None);
}

#[test]
fn recording_an_interval_again_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    store.record(&snapshot(T0, 10, true), &[]).unwrap();
    store.record(&snapshot(T0, 20, true), &[]).unwrap();
    let rows = query(&path, Some("frame"), 0).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].stats.latency.count, 20);
}

#[test]
fn alert_transitions_are_kept_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    let fired = alert("p99(infer) > 30ms for 5s", AlertState::Firing, T0 + 5 * SEC);
    store
        .record(
            &snapshot(T0 + 10 * SEC, 1, true),
            std::slice::from_ref(&fired),
        )
        .unwrap();
    // The caller may pass the same list again with a new transition.
    let resolved = alert(
        "p99(infer) > 30ms for 5s",
        AlertState::Resolved,
        T0 + 15 * SEC,
    );
    let both = [fired, resolved.clone()];
    store
        .record(&snapshot(T0 + 20 * SEC, 1, true), &both)
        .unwrap();
    let reader = HistoryReader::open(&path).unwrap();
    assert_eq!(reader.alerts(0).unwrap(), both);
    assert_eq!(reader.alerts(T0 + 10 * SEC).unwrap(), [resolved]);
    let report = reader.report(Some("infer"), 0).unwrap();
    assert_eq!(report.rows.len(), 2);
    assert_eq!(report.alerts.len(), 2);
}

#[test]
fn retention_prunes_rows_older_than_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    // 60 s retention, an interval every 10 s for 3 minutes.
    let mut store = HistoryStore::open(&path, Duration::from_secs(60)).unwrap();
    for i in 0..=18 {
        let ts = T0 + i * 10 * SEC;
        let alerts = [alert("fps < 25 for 10s", AlertState::Firing, ts)];
        store.record(&snapshot(ts, 5, true), &alerts).unwrap();
    }
    let newest = T0 + 180 * SEC;
    let rows = query(&path, None, 0).unwrap();
    let oldest = rows.iter().map(|r| r.ts_ns).min().unwrap();
    assert_eq!(oldest, newest - 60 * SEC, "exactly the retention is kept");
    assert_eq!(rows.len(), 7 * 3);
    let reader = HistoryReader::open(&path).unwrap();
    assert_eq!(reader.alerts(0).unwrap().len(), 7);
    let conn = Connection::open(&path).unwrap();
    let intervals: i64 = conn
        .query_row("SELECT count(*) FROM intervals", [], |r| r.get(0))
        .unwrap();
    assert_eq!(intervals, 7);
}

#[test]
fn readers_see_whole_intervals_while_another_connection_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    store.record(&snapshot(T0, 1, true), &[]).unwrap();

    // A write transaction held open on another connection blocks no reader
    // and shows nothing until it commits.
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    other
        .execute(
            "INSERT INTO intervals (ts_ns, interval_ns, events, drops) VALUES (?1, 1, 0, 0)",
            [schema::int(T0 + SEC)],
        )
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(query(&path, None, 0).unwrap().len(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the reader waited"
    );
    other.execute_batch("ROLLBACK").unwrap();

    // The store writing from a thread while this one reads: every read
    // sees a whole number of intervals, never fewer than the last read.
    let writer = std::thread::spawn(move || {
        for i in 1..=200 {
            store.record(&snapshot(T0 + i * SEC, i, true), &[]).unwrap();
        }
    });
    let mut seen = 0;
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let rows = query(&path, None, 0).unwrap();
        assert_eq!(rows.len() % 3, 0, "half an interval visible");
        assert!(rows.len() >= seen);
        seen = rows.len();
        reads += 1;
    }
    writer.join().unwrap();
    assert_eq!(query(&path, None, 0).unwrap().len(), 201 * 3);
}

fn error_text(result: Result<impl std::fmt::Debug, HistoryError>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn missing_file_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.db");
    let text = error_text(query(&path, None, 0));
    assert_eq!(
        text,
        format!(
            "no history database at {0}: start the agent with run --history {0}",
            path.display()
        )
    );
    assert!(!path.exists(), "a reader never creates the file");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = "these are my notes, not a database\n".repeat(100);
    std::fs::write(&path, &text).unwrap();
    let read = error_text(query(&path, None, 0));
    assert!(read.contains("is not a SQLite database"), "{read}");
    assert!(read.contains("notes.txt"), "{read}");
    let write = error_text(HistoryStore::open(&path, WEEK));
    assert!(write.contains("is not a SQLite database"), "{write}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(!read.contains('\n') && !write.contains('\n'));
}

#[test]
fn another_programs_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE users (name TEXT)")
        .unwrap();
    for text in [
        error_text(query(&path, None, 0)),
        error_text(HistoryStore::open(&path, WEEK)),
    ] {
        assert!(
            text.contains("is a SQLite database but not an adeline-trace history database"),
            "{text}"
        );
    }
    // A newer schema is named as such.
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    drop(HistoryStore::open(&path, WEEK).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 2)
        .unwrap();
    let text = error_text(query(&path, None, 0));
    assert!(text.contains("schema version 2"), "{text}");
}

#[test]
fn since_parses_durations_and_names_bad_ones() {
    assert_eq!(
        parse_since("since", "1h").unwrap(),
        Duration::from_secs(3600)
    );
    assert_eq!(
        parse_since("since", " 7d ").unwrap(),
        Duration::from_secs(7 * 86400)
    );
    assert_eq!(
        parse_since("since", "1h 30m").unwrap(),
        Duration::from_secs(5400)
    );
    let text = parse_since("since", "yesterday").unwrap_err().to_string();
    assert!(text.starts_with("bad since 'yesterday' ("), "{text}");
    assert!(
        text.ends_with("): use a duration such as 30m, 1h or 7d"),
        "{text}"
    );
    assert_eq!(since_ns(T0, Duration::from_secs(10)), T0 - 10 * SEC);
    assert_eq!(since_ns(5, Duration::from_secs(10)), 0);
}

// ---------------------------------------------------------------------------
// The sink

/// A running agent whose periods are given in advance.
struct Periods(std::sync::Mutex<Vec<Snapshot>>);

impl crate::sinks::SnapshotSource for Periods {
    fn snapshot(&self, window: Window) -> Snapshot {
        crate::sinks::api::fixtures::sample_snapshot(window)
    }
    fn alerts(&self) -> Vec<AlertEvent> {
        vec![]
    }
    fn take_period(&self, _: Window) -> Option<Snapshot> {
        let mut periods = self.0.lock().unwrap();
        (!periods.is_empty()).then(|| periods.remove(0))
    }
}

#[test]
fn the_sink_writes_the_last_partial_interval_at_the_end_of_the_run() {
    use crate::sinks::{Finish, Sink, Start};
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut partial = snapshot(T0 + 13 * SEC, 3, false);
    partial.window_ns = 3 * SEC;
    let mut empty = snapshot(T0 + 13 * SEC, 0, false);
    empty.window_ns = 0;
    // A full interval, the partial one at the end, then (a second finish)
    // an empty one, which writes nothing.
    let source = Periods(std::sync::Mutex::new(vec![
        snapshot(T0 + 10 * SEC, 10, false),
        partial,
        empty,
    ]));
    let mut sink = HistorySink::open(&HistorySpec {
        path: path.clone(),
        interval: Duration::from_secs(10),
        retention: WEEK,
    })
    .unwrap();
    sink.start(&Start {
        ts_ns: T0,
        pids: &[],
        processes: &[],
        probes: &[],
        exits: &[],
        unwind: &[],
        unwind_warnings: &[],
        rss_hook: None,
    })
    .unwrap();
    assert!(sink.next_tick().is_some());
    sink.tick(&source).unwrap();
    let finish = Finish {
        ts_ns: T0 + 13 * SEC,
        duration_ns: 13 * SEC,
        events: 0,
        drops: 0,
        spans: 0,
        span_drops: 0,
        stages: &[],
    };
    sink.finish(&finish, &source).unwrap();
    assert_eq!(sink.next_tick(), None, "no tick after the end");
    sink.finish(&finish, &source).unwrap();
    let rows = query(&path, Some("infer"), 0).unwrap();
    let got: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|r| (r.ts_ns, r.interval_ns, r.stats.latency.count))
        .collect();
    assert_eq!(
        got,
        vec![(T0 + 10 * SEC, 10 * SEC, 20), (T0 + 13 * SEC, 3 * SEC, 6)]
    );
}

// ---------------------------------------------------------------------------
// GET /api/history

/// A source that only answers with its history database.
struct HistorySource(Option<PathBuf>);

impl crate::sinks::SnapshotSource for HistorySource {
    fn snapshot(&self, window: Window) -> Snapshot {
        crate::sinks::api::fixtures::sample_snapshot(window)
    }
    fn alerts(&self) -> Vec<AlertEvent> {
        vec![]
    }
    fn history_db(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

/// `GET path` on an API server over `db`: (status, JSON body).
fn get(db: Option<PathBuf>, paths: &[&str]) -> Vec<(u16, Value)> {
    use crate::cmd::summary::client::{get, Endpoint};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let spec = crate::sinks::api::ApiSpec {
        port: Some(0),
        socket: None,
    };
    let source: Arc<dyn crate::sinks::SnapshotSource> = Arc::new(HistorySource(db));
    let handle = runtime
        .block_on(crate::sinks::api::server::serve(&spec, source, async {
            let _ = stopped.await;
        }))
        .unwrap();
    let at = Endpoint::Tcp(handle.tcp_addr().unwrap());
    // The server runs on the runtime thread; the blocking client here.
    let server = std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = handle.join().await;
        })
    });
    let answers = paths
        .iter()
        .map(|p| {
            let r = get(&at, p).unwrap();
            let body = serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("GET {p}: not JSON ({e}): {}", r.body));
            (r.status, body)
        })
        .collect();
    let _ = stop.send(());
    server.join().unwrap();
    answers
}

#[test]
fn api_serves_rows_and_alerts_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    let now = now_ns();
    let fired = alert("fps < 25 for 10s", AlertState::Firing, now - 30 * SEC);
    store
        .record(&snapshot(now - 2 * 3600 * SEC, 10, true), &[])
        .unwrap();
    store
        .record(&snapshot(now - 20 * SEC, 20, true), &[fired])
        .unwrap();
    store
        .record(&snapshot(now - 10 * SEC, 30, false), &[])
        .unwrap();
    let answers = get(
        Some(path),
        &[
            "/api/history",
            "/api/history?since=3h",
            "/api/history?since=1m&stage=infer",
            "/api/history?since=soon",
            "/api/history?window=1s",
        ],
    );
    let (status, last_hour) = &answers[0];
    assert_eq!(*status, 200);
    let rows = last_hour["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 3, "default since=1h");
    let first = &rows[0];
    for field in [
        "ts_ns",
        "interval_ns",
        "stage",
        "count",
        "rate_hz",
        "p50_ns",
        "p95_ns",
        "p99_ns",
        "max_ns",
        "self_ns",
        "frame_share",
        "fps",
        "frame_p99_ns",
    ] {
        assert!(first.get(field).is_some(), "no {field} in {first}");
    }
    assert_eq!(first["stage"], "frame");
    assert_eq!(first["count"], 20);
    assert_eq!(last_hour["alerts"][0]["rule"], "fps < 25 for 10s");
    assert_eq!(last_hour["alerts"][0]["state"], "firing");
    assert_eq!(answers[1].1["rows"].as_array().unwrap().len(), 3 * 3);
    let infer = answers[2].1["rows"].as_array().unwrap();
    assert_eq!(infer.len(), 2);
    assert!(infer.iter().all(|r| r["stage"] == "infer"));
    assert_eq!(answers[3].0, 400);
    let error = answers[3].1["error"].as_str().unwrap();
    assert!(error.starts_with("bad since 'soon' ("), "{error}");
    assert_eq!(answers[4].0, 400);
    assert_eq!(
        answers[4].1["error"],
        "unknown query parameter 'window': accepted: since, stage"
    );
}

#[test]
fn api_without_history_is_a_404_and_before_the_file_exists_empty() {
    let answers = get(None, &["/api/history"]);
    assert_eq!(answers[0].0, 404);
    assert_eq!(
        answers[0].1["error"],
        "this agent keeps no history: start it with --history FILE"
    );
    let dir = tempfile::tempdir().unwrap();
    let answers = get(Some(dir.path().join("later.db")), &["/api/history"]);
    assert_eq!(
        answers[0],
        (200, serde_json::json!({"rows": [], "alerts": []}))
    );
}
