//! Readers of a history database (the `history` command, `GET /api/history`):
//! a read-only connection that never blocks the agent writing the file and
//! sees whole intervals only. The row and report types are the JSON both
//! print (field names are stable, docs/history.md).
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, Row};
use serde::{Deserialize, Serialize};

use super::{
    error::HistoryError,
    schema::{self, int, BUSY_TIMEOUT},
};
use crate::{
    alerts::{AlertEvent, AlertState},
    metrics::snapshot::{Percentiles, StageStats},
};

/// One stage over one interval, with that interval's frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// Wall-clock ns (since the Unix epoch) at the end of the interval.
    pub ts_ns: u64,
    /// Length of the interval (ns).
    pub interval_ns: u64,
    /// The stage over the interval, in the snapshot's schema: its name,
    /// calls per second, latency ([`Percentiles`](crate::metrics::snapshot::Percentiles)),
    /// total and self time, and share of frame time.
    #[serde(flatten)]
    pub stats: StageStats,
    /// Frames per second in the interval; None without a frame stage.
    pub fps: Option<f64>,
    /// Frames completed in the interval and their end-to-end latency (the
    /// figures the database keeps of the frames' percentiles).
    pub frame_count: Option<u64>,
    pub frame_p50_ns: Option<u64>,
    pub frame_p95_ns: Option<u64>,
    pub frame_p99_ns: Option<u64>,
    pub frame_max_ns: Option<u64>,
    /// RSS of the traced processes at the end of the interval, summed (bytes).
    pub rss_bytes: Option<u64>,
    /// Their RSS growth rate, summed (bytes per second).
    pub rss_growth_bytes_per_s: Option<f64>,
}

/// What `GET /api/history` and `history --json` return.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryReport {
    /// Oldest first; within an interval, stages in plan order.
    pub rows: Vec<HistoryRow>,
    /// Alert transitions in the same time range, oldest first.
    pub alerts: Vec<AlertEvent>,
}

/// A read-only connection to a history database.
#[derive(Debug)]
pub struct HistoryReader {
    conn: Connection,
    path: PathBuf,
}

impl HistoryReader {
    /// Opens `path` read-only; one-line errors for a missing file, a file
    /// that is not SQLite, and someone else's database.
    pub fn open(path: &Path) -> Result<HistoryReader, HistoryError> {
        if !path.exists() {
            return Err(HistoryError::Missing {
                path: path.to_path_buf(),
            });
        }
        let sql = |e| HistoryError::sqlite(path, e);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        schema::check(&conn, path)?;
        Ok(HistoryReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Rows of `stage` (every stage with None) with `ts_ns >= since_ns`.
    pub fn rows(
        &self,
        stage: Option<&str>,
        since_ns: u64,
    ) -> Result<Vec<HistoryRow>, HistoryError> {
        let sql = |e| HistoryError::sqlite(&self.path, e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.ts_ns, i.interval_ns, s.stage, s.count, s.rate_hz, s.min_ns,
                    s.mean_ns, s.p50_ns, s.p90_ns, s.p95_ns, s.p99_ns, s.p999_ns, s.max_ns,
                    s.total_ns, s.self_ns, s.frame_share, i.fps, i.frame_count,
                    i.frame_p50_ns, i.frame_p95_ns, i.frame_p99_ns, i.frame_max_ns,
                    i.rss_bytes, i.rss_growth_bytes_per_s
                 FROM stages s JOIN intervals i ON i.ts_ns = s.ts_ns
                 WHERE s.ts_ns >= ?1 AND (?2 IS NULL OR s.stage = ?2)
                 ORDER BY s.ts_ns, s.ord",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(rusqlite::params![int(since_ns), stage], row)
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }

    /// Alert transitions with `ts_ns >= since_ns`, oldest first.
    pub fn alerts(&self, since_ns: u64) -> Result<Vec<AlertEvent>, HistoryError> {
        let sql = |e| HistoryError::sqlite(&self.path, e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT ts_ns, rule, state, value, threshold, since_ns FROM alerts
                 WHERE ts_ns >= ?1 ORDER BY ts_ns, rule",
            )
            .map_err(sql)?;
        let rows = stmt.query_map([int(since_ns)], alert).map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }

    /// The rows and the alerts from `since_ns` on.
    pub fn report(
        &self,
        stage: Option<&str>,
        since_ns: u64,
    ) -> Result<HistoryReport, HistoryError> {
        Ok(HistoryReport {
            rows: self.rows(stage, since_ns)?,
            alerts: self.alerts(since_ns)?,
        })
    }

    /// Every stage name in the database, in plan order of its newest interval
    /// (then any older names alphabetically).
    pub fn stages(&self) -> Result<Vec<String>, HistoryError> {
        let sql = |e| HistoryError::sqlite(&self.path, e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT stage FROM stages GROUP BY stage
                 ORDER BY max(ts_ns) DESC, min(ord), stage",
            )
            .map_err(sql)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }

    /// Wall-clock ns of the newest interval, None when there is none.
    pub fn newest_ns(&self) -> Result<Option<u64>, HistoryError> {
        self.conn
            .query_row("SELECT max(ts_ns) FROM intervals", [], |r| opt_nat(r, 0))
            .map_err(|e| HistoryError::sqlite(&self.path, e))
    }
}

fn row(r: &Row<'_>) -> rusqlite::Result<HistoryRow> {
    Ok(HistoryRow {
        ts_ns: nat(r, 0)?,
        interval_ns: nat(r, 1)?,
        stats: StageStats {
            stage: r.get(2)?,
            rate_hz: r.get(4)?,
            latency: Percentiles {
                count: nat(r, 3)?,
                min_ns: nat(r, 5)?,
                mean_ns: nat(r, 6)?,
                p50_ns: nat(r, 7)?,
                p90_ns: nat(r, 8)?,
                p95_ns: nat(r, 9)?,
                p99_ns: nat(r, 10)?,
                p999_ns: nat(r, 11)?,
                max_ns: nat(r, 12)?,
            },
            total_ns: nat(r, 13)?,
            self_ns: nat(r, 14)?,
            frame_share: r.get(15)?,
        },
        fps: r.get(16)?,
        frame_count: opt_nat(r, 17)?,
        frame_p50_ns: opt_nat(r, 18)?,
        frame_p95_ns: opt_nat(r, 19)?,
        frame_p99_ns: opt_nat(r, 20)?,
        frame_max_ns: opt_nat(r, 21)?,
        rss_bytes: opt_nat(r, 22)?,
        rss_growth_bytes_per_s: r.get(23)?,
    })
}

fn alert(r: &Row<'_>) -> rusqlite::Result<AlertEvent> {
    let state: String = r.get(2)?;
    let state = match state.as_str() {
        "resolved" => AlertState::Resolved,
        _ => AlertState::Firing,
    };
    Ok(AlertEvent {
        ts_ns: nat(r, 0)?,
        profile: None,
        rule: r.get(1)?,
        state,
        value: r.get(3)?,
        threshold: r.get(4)?,
        since_ns: nat(r, 5)?,
    })
}

/// A non-negative integer column (negative values, never written, read as 0).
fn nat(r: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(r.get::<_, i64>(i)?.max(0) as u64)
}

/// A nullable non-negative integer column.
fn opt_nat(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
}
