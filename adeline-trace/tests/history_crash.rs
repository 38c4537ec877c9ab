//! A history database survives its writer being killed: committed
//! intervals stay, the half-written one is not seen, and a new agent can
//! append to the file.
//!
//! The writer must die for real (SIGKILL, nothing closed), so it is a
//! process of its own: this test binary runs itself again with
//! `ADELINE_HISTORY_CRASH_DB` set, and that branch of `main` (not a test)
//! writes and kills itself. `harness = false` (Cargo.toml): `main` is this
//! file's own entry point.
use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use adeline_trace::{
    metrics::snapshot::Snapshot,
    sinks::history::{HistoryReader, HistoryStore},
};
use rusqlite::Connection;

/// Env var naming the database the crash writer writes before it kills itself.
const CRASH_DB: &str = "ADELINE_HISTORY_CRASH_DB";
const SEC: u64 = 1_000_000_000;
/// A wall-clock time to count from (2023-11-14).
const T0: u64 = 1_700_000_000 * SEC;
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn main() {
    match std::env::var_os(CRASH_DB) {
        Some(path) => crash_writer(Path::new(&path)),
        None => {
            committed_rows_survive_sigkill();
            println!("test committed_rows_survive_sigkill ... ok");
        }
    }
}

/// A 10 s interval ending at `ts_ns` with `count` calls of each of three stages.
fn snapshot(ts_ns: u64, count: u64) -> Snapshot {
    let stage = |name: &str| {
        serde_json::json!({
            "stage": name, "rate_hz": count as f64 / 10.0, "count": count,
            "min_ns": 1, "mean_ns": 2, "p50_ns": 2, "p90_ns": 3, "p95_ns": 3,
            "p99_ns": 4, "p999_ns": 4, "max_ns": 5, "total_ns": 2 * count,
            "self_ns": count, "frame_share": null
        })
    };
    serde_json::from_value(serde_json::json!({
        "v": 1, "ts_ns": ts_ns, "window": "10s", "window_ns": 10 * SEC,
        "stages": [stage("frame"), stage("infer"), stage("track")],
        "frames": null, "gauges": [],
        "bottleneck": {"top_self_share": null, "p99_growth": null},
        "events": 0, "drops": 0
    }))
    .expect("a valid snapshot")
}

/// Records 3 intervals, starts a 4th without committing, and SIGKILLs
/// itself without closing anything.
fn crash_writer(path: &Path) -> ! {
    let mut store = HistoryStore::open(path, WEEK).unwrap();
    for i in 0..3 {
        store.record(&snapshot(T0 + i * 10 * SEC, 10), &[]).unwrap();
    }
    let half = Connection::open(path).unwrap();
    half.execute_batch("BEGIN IMMEDIATE").unwrap();
    half.execute(
        "INSERT INTO intervals (ts_ns, interval_ns, events, drops) VALUES (?1, 1, 0, 0)",
        [(T0 + 30 * SEC) as i64],
    )
    .unwrap();
    // SAFETY: kill(2) on this very process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL did not stop the writer");
}

fn rows(path: &Path) -> usize {
    HistoryReader::open(path)
        .unwrap()
        .rows(None, 0)
        .unwrap()
        .len()
}

fn committed_rows_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("history.db");
    let status = Command::new(std::env::current_exe().unwrap())
        .env(CRASH_DB, &path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // The log of the killed writer is still there; a reader recovers it.
    assert!(path.with_extension("db-wal").exists());
    let read = HistoryReader::open(&path).unwrap().rows(None, 0).unwrap();
    assert_eq!(read.len(), 3 * 3, "3 committed intervals, not the 4th");
    assert!(read.iter().all(|r| r.stats.latency.count == 10));
    // And a new agent can append to it.
    let mut store = HistoryStore::open(&path, WEEK).unwrap();
    store.record(&snapshot(T0 + 40 * SEC, 10), &[]).unwrap();
    assert_eq!(rows(&path), 4 * 3);
}
