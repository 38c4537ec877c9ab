//! stderr lines that journald files at the right priority. Under systemd
//! with `StandardError=journal`, stderr is a stream to journald and
//! `$JOURNAL_STREAM` holds its `DEVICE:INODE` (systemd.exec(5)); journald
//! then reads a leading `<N>` (sd-daemon(3): 3 error, 4 warning, 6 info)
//! as the line's priority and strips it. Anywhere else the lines stay plain.
use std::sync::OnceLock;

/// A syslog priority of sd-daemon(3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Err = 3,
    Warning = 4,
    Info = 6,
}

/// The `<N>` prefix of a stderr line at `priority`: empty unless stderr
/// is connected to the journal.
pub fn prefix(priority: Priority) -> &'static str {
    if !stderr_is_journal() {
        return "";
    }
    match priority {
        Priority::Err => "<3>",
        Priority::Warning => "<4>",
        Priority::Info => "<6>",
    }
}

fn stderr_is_journal() -> bool {
    static IS: OnceLock<bool> = OnceLock::new();
    *IS.get_or_init(|| {
        let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
            return false;
        };
        // SAFETY: fstat on fd 2 into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(2, &mut st) } != 0 {
            return false;
        }
        is_stream(&stream, st.st_dev, st.st_ino)
    })
}

/// Whether `$JOURNAL_STREAM` (`DEVICE:INODE`, decimal) names this file.
fn is_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_matches_device_and_inode() {
        assert!(is_stream("64769:123456", 64769, 123456));
        assert!(!is_stream("64769:123457", 64769, 123456));
        assert!(!is_stream("64769", 64769, 123456));
        assert!(!is_stream("", 0, 0));
        assert!(!is_stream("a:b", 0, 0));
    }
}
