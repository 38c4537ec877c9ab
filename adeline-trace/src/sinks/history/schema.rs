//! The history database's tables (docs/history.md), and the check that a
//! file holds them. The schema version is SQLite's `user_version`.
use std::{path::Path, time::Duration};

use rusqlite::Connection;

use super::error::HistoryError;

/// How long a connection waits for another one's lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite integers are signed 64-bit: nanoseconds since 1970 fit until 2262.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Version of the tables below; stored as `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// Every table and index, created in one transaction by the writer.
/// Times are integer nanoseconds (`ts_ns`: wall clock since the Unix epoch
/// at the end of the interval); a NULL is "none", never zero.
const DDL: &str = "
CREATE TABLE intervals (
    ts_ns        INTEGER PRIMARY KEY,
    interval_ns  INTEGER NOT NULL,
    events       INTEGER NOT NULL,
    drops        INTEGER NOT NULL,
    frame_root   TEXT,
    fps          REAL,
    frame_count  INTEGER,
    frame_p50_ns INTEGER,
    frame_p95_ns INTEGER,
    frame_p99_ns INTEGER,
    frame_max_ns INTEGER,
    rss_bytes    INTEGER,
    rss_growth_bytes_per_s REAL
);
CREATE TABLE stages (
    ts_ns       INTEGER NOT NULL,
    ord         INTEGER NOT NULL,
    stage       TEXT NOT NULL,
    count       INTEGER NOT NULL,
    rate_hz     REAL NOT NULL,
    min_ns      INTEGER NOT NULL,
    mean_ns     INTEGER NOT NULL,
    p50_ns      INTEGER NOT NULL,
    p90_ns      INTEGER NOT NULL,
    p95_ns      INTEGER NOT NULL,
    p99_ns      INTEGER NOT NULL,
    p999_ns     INTEGER NOT NULL,
    max_ns      INTEGER NOT NULL,
    total_ns    INTEGER NOT NULL,
    self_ns     INTEGER NOT NULL,
    frame_share REAL,
    PRIMARY KEY (ts_ns, stage)
) WITHOUT ROWID;
CREATE INDEX stages_by_name ON stages (stage, ts_ns);
CREATE TABLE alerts (
    ts_ns     INTEGER NOT NULL,
    rule      TEXT NOT NULL,
    state     TEXT NOT NULL,
    value     REAL NOT NULL,
    threshold REAL NOT NULL,
    since_ns  INTEGER NOT NULL,
    PRIMARY KEY (ts_ns, rule, state)
) WITHOUT ROWID;
";

/// For the writer: creates the tables in an empty database, or checks an
/// existing one is ours and readable.
pub fn create_or_check(conn: &mut Connection, path: &Path) -> Result<(), HistoryError> {
    let sql = |e| HistoryError::sqlite(path, e);
    let tx = conn.transaction().map_err(sql)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version == 0 {
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(sql)?;
        if tables > 0 {
            return Err(HistoryError::Foreign {
                path: path.to_path_buf(),
            });
        }
        tx.execute_batch(DDL).map_err(sql)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql)?;
    } else {
        check_version(version, path)?;
    }
    tx.commit().map_err(sql)
}

/// For readers: the file holds our tables in a version we read.
pub fn check(conn: &Connection, path: &Path) -> Result<(), HistoryError> {
    let sql = |e| HistoryError::sqlite(path, e);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version == 0 {
        return Err(HistoryError::Foreign {
            path: path.to_path_buf(),
        });
    }
    check_version(version, path)
}

fn check_version(version: i64, path: &Path) -> Result<(), HistoryError> {
    match version {
        SCHEMA_VERSION => Ok(()),
        v if v > SCHEMA_VERSION => Err(HistoryError::NewerSchema {
            path: path.to_path_buf(),
            found: v,
            supported: SCHEMA_VERSION,
        }),
        _ => Err(HistoryError::Foreign {
            path: path.to_path_buf(),
        }),
    }
}
