//! History: an embedded SQLite store of one row per stage per interval,
//! with retention; `GET /api/history` and the `history` command read it.
//!
//! [`store`] is the agent's writer, [`reader`] the read-only side and its
//! JSON rows, [`schema`] the tables, [`api`] the endpoint. Format and
//! fields: docs/history.md.
use std::time::Duration;

pub mod api;
pub mod error;
pub mod reader;
pub mod schema;
pub mod sink;
pub mod store;

pub use error::HistoryError;
pub use reader::{HistoryReader, HistoryReport, HistoryRow};
pub use sink::HistorySink;
pub use store::HistoryStore;

/// The history database a run keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySpec {
    pub path: std::path::PathBuf,
    /// One row per stage per interval.
    pub interval: Duration,
    /// Rows older than this are deleted.
    pub retention: Duration,
}

/// How far back a reader looks when it is not told.
pub const DEFAULT_SINCE: &str = "1h";

/// Parses `what` (`since`, `--since`) such as `30m`, `1h`, `7d` or `1h 30m`.
pub fn parse_since(what: &'static str, value: &str) -> Result<Duration, HistoryError> {
    humantime::parse_duration(value.trim()).map_err(|e| HistoryError::Since {
        what,
        value: value.chars().take(80).collect(),
        reason: e.to_string(),
    })
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

/// The wall-clock ns `since` before `now_ns` (0 when that is before 1970).
pub fn since_ns(now_ns: u64, since: Duration) -> u64 {
    now_ns.saturating_sub(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
