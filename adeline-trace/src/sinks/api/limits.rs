//! What one local user can make the API server hold, and for how long
//! (docs/api.md, "Limits"). Any local user can connect to the TCP port, so
//! every connection is bounded in number, time and memory, and the server
//! sheds the connections that do nothing before it refuses one that would
//! ask something.
use std::time::Duration;

/// The API server's bounds. [`Limits::DEFAULT`] is what the agent uses;
/// tests shorten the timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, TCP and unix socket together. A new one
    /// beyond it closes the connection that has been idle longest (no
    /// request in progress: just connected, trickling a request head, or
    /// between keep-alive requests); when every connection is busy with a
    /// request, the new one gets a `503` and is closed.
    pub max_connections: usize,
    /// `/api/stream` (dashboard) streams at once; one more gets a `503`.
    pub max_streams: usize,
    /// A request head (request line and headers) must be complete this
    /// long after the connection was accepted, or after its first byte on
    /// a kept-alive connection.
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// A handler must answer within this, else the answer is a `503`.
    pub request_timeout: Duration,
    /// A response (or stream) that moves no byte for this long, because
    /// the client does not read it, is dropped with its connection.
    pub stall_timeout: Duration,
    /// Largest request head in bytes (a bigger one is answered `431`);
    /// also what hyper buffers of a response per connection. Request
    /// bodies are never read: every endpoint is GET.
    pub max_head_bytes: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_connections: 256,
        max_streams: 16,
        header_timeout: Duration::from_secs(5),
        // Above Prometheus' default 15 s scrape interval, so a scraper
        // keeps its connection.
        idle_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
        max_head_bytes: 16 << 10,
        max_headers: 64,
    };

    /// [`Limits::DEFAULT`] with `max_connections` lowered to fit the file
    /// descriptors this process may still open (half of them, at least 16),
    /// so a flood of connections can never take the descriptors tracing
    /// needs.
    pub fn for_this_process() -> Limits {
        let free = free_fds().unwrap_or(usize::MAX);
        Limits {
            max_connections: Limits::DEFAULT.max_connections.min((free / 2).max(16)),
            ..Limits::DEFAULT
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// File descriptors this process may still open: the soft RLIMIT_NOFILE
/// minus those open now (None when either cannot be read).
fn free_fds() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    Some(soft.saturating_sub(open))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_free_descriptors() {
        let limits = Limits::for_this_process();
        assert!(limits.max_connections <= Limits::DEFAULT.max_connections);
        assert!(limits.max_connections >= 16);
        let free = free_fds().unwrap();
        assert!(free > 0);
        assert!(limits.max_connections <= (free / 2).max(16));
    }
}
