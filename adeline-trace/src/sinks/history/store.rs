//! The writer: the running agent's connection to its history database.
//! Each [`HistoryStore::record`] is one transaction (one interval: its
//! frames, a row per stage, the alert transitions) that also deletes rows
//! older than the retention. The journal is a WAL with `synchronous=NORMAL`:
//! a committed interval survives the agent being killed (SIGKILL, a panic),
//! and readers in other processes never block it nor see half an interval.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{params, Connection, OpenFlags};

use super::{
    error::HistoryError,
    schema::{self, int, BUSY_TIMEOUT},
};
use crate::{
    alerts::AlertEvent,
    metrics::snapshot::{FrameStats, Snapshot},
};

/// The agent's open history database.
#[derive(Debug)]
pub struct HistoryStore {
    conn: Connection,
    path: PathBuf,
    retention_ns: u64,
}

impl HistoryStore {
    /// Opens `path` for writing, creating its directory and the tables if
    /// needed; refuses a file that is not one of our databases.
    pub fn open(path: &Path, retention: Duration) -> Result<HistoryStore, HistoryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let sql = |e| HistoryError::sqlite(path, e);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        // The first statement reads the header: "not a database" shows here.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(HistoryError::NoWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        schema::create_or_check(&mut conn, path)?;
        Ok(HistoryStore {
            conn,
            path: path.to_path_buf(),
            retention_ns: u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one interval: `snapshot` should cover exactly the history
    /// interval (its `ts_ns` ends it, its `window_ns` is its length); one
    /// row per stage, one for the frames, and `alerts` (transitions; ones
    /// already recorded are skipped, so passing the same list again is
    /// harmless). Deletes what is older than the retention, counted back
    /// from `snapshot.ts_ns`. Recording the same `ts_ns` twice replaces it.
    pub fn record(
        &mut self,
        snapshot: &Snapshot,
        alerts: &[AlertEvent],
    ) -> Result<(), HistoryError> {
        let path = self.path.clone();
        let sql = |e| HistoryError::sqlite(&path, e);
        let tx = self.conn.transaction().map_err(sql)?;
        let ts = int(snapshot.ts_ns);
        {
            let f = snapshot.frames.as_ref();
            // Memory of the traced processes, summed (None: not sampled).
            let rss = (!snapshot.memory.is_empty())
                .then(|| snapshot.memory.iter().map(|m| m.rss_bytes).sum::<u64>());
            let growth = snapshot
                .memory
                .iter()
                .filter_map(|m| m.growth_bytes_per_s)
                .reduce(|a, b| a + b);
            let frame_int = |v: fn(&FrameStats) -> u64| f.map(|f| int(v(f)));
            let mut interval = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO intervals (ts_ns, interval_ns, events, drops,
                        frame_root, fps, frame_count, frame_p50_ns, frame_p95_ns,
                        frame_p99_ns, frame_max_ns, rss_bytes, rss_growth_bytes_per_s)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(sql)?;
            interval
                .execute(params![
                    ts,
                    int(snapshot.window_ns),
                    int(snapshot.events),
                    int(snapshot.drops),
                    f.map(|f| f.root.as_str()),
                    f.map(|f| f.fps),
                    frame_int(|f| f.latency.count),
                    frame_int(|f| f.latency.p50_ns),
                    frame_int(|f| f.latency.p95_ns),
                    frame_int(|f| f.latency.p99_ns),
                    frame_int(|f| f.latency.max_ns),
                    rss.map(int),
                    growth,
                ])
                .map_err(sql)?;

            let mut stage = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO stages (ts_ns, ord, stage, count, rate_hz, min_ns,
                        mean_ns, p50_ns, p90_ns, p95_ns, p99_ns, p999_ns, max_ns, total_ns,
                        self_ns, frame_share)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(sql)?;
            for (ord, s) in snapshot.stages.iter().enumerate() {
                let l = &s.latency;
                stage
                    .execute(params![
                        ts,
                        ord as i64,
                        s.stage,
                        int(l.count),
                        s.rate_hz,
                        int(l.min_ns),
                        int(l.mean_ns),
                        int(l.p50_ns),
                        int(l.p90_ns),
                        int(l.p95_ns),
                        int(l.p99_ns),
                        int(l.p999_ns),
                        int(l.max_ns),
                        int(s.total_ns),
                        int(s.self_ns),
                        s.frame_share,
                    ])
                    .map_err(sql)?;
            }

            let mut alert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO alerts (ts_ns, rule, state, value, threshold, since_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql)?;
            for a in alerts {
                alert
                    .execute(params![
                        int(a.ts_ns),
                        a.rule,
                        a.state.as_str(),
                        a.value,
                        a.threshold,
                        int(a.since_ns),
                    ])
                    .map_err(sql)?;
            }

            let cutoff = int(snapshot.ts_ns.saturating_sub(self.retention_ns));
            for table in ["intervals", "stages", "alerts"] {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE ts_ns < ?1"))
                    .and_then(|mut s| s.execute([cutoff]))
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }
}
