//! What can go wrong with a history database: each variant prints one line
//! that names the file and says what to do.
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HistoryError {
    /// `history` or the API asked for a file that does not exist.
    #[error("no history database at {path}: start the agent with run --history {path}")]
    Missing { path: PathBuf },

    /// The file exists but SQLite cannot read it as a database.
    #[error("{path} is not a SQLite database (not written by run --history): pass the file the agent writes")]
    NotADatabase { path: PathBuf },

    /// A SQLite database, but someone else's.
    #[error(
        "{path} is a SQLite database but not an adeline-trace history database: pass another file"
    )]
    Foreign { path: PathBuf },

    /// Written by a newer adeline-trace with a schema this one cannot read.
    #[error("{path} has history schema version {found}; this adeline-trace reads version {supported}: use a newer adeline-trace or another file")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// The directory that should hold the database cannot be created.
    #[error("cannot create the directory {dir} for the history database: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },

    /// SQLite would not switch the file to a write-ahead log.
    #[error("cannot keep history in {path} with a write-ahead log (journal mode stays '{mode}'): put it on a local filesystem")]
    NoWal { path: PathBuf, mode: String },

    /// A `since` that is not a duration.
    #[error("bad {what} '{value}' ({reason}): use a duration such as 30m, 1h or 7d")]
    Since {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// Any other SQLite failure (disk full, permissions, locking).
    #[error("history database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl HistoryError {
    /// Wraps a SQLite error on `path`, recognising "file is not a database".
    pub(crate) fn sqlite(path: &std::path::Path, source: rusqlite::Error) -> HistoryError {
        if source.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
            return HistoryError::NotADatabase {
                path: path.to_path_buf(),
            };
        }
        HistoryError::Sqlite {
            path: path.to_path_buf(),
            source,
        }
    }
}
