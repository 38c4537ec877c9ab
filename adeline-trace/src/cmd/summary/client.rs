//! A minimal blocking HTTP/1.1 client for the agent's API: one request per
//! connection (`Connection: close`) over TCP or a unix socket, no
//! dependencies beyond std. It reads Content-Length, chunked and
//! read-to-close bodies; that is all the API sends.
//!
//! Every wait is bounded: connecting by [`CONNECT_TIMEOUT`], and sending
//! the request and reading the whole response by [`RESPONSE_TIMEOUT`]
//! together (a deadline, not a per-read timeout, so a server that trickles
//! a byte at a time cannot hold the client either).
use std::{
    fmt, io,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Deserialize;
use thiserror::Error;

use crate::sinks::api::listen::connect_unix;

/// How long to wait for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long sending a request and reading its whole response may take.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (a snapshot is a few kilobytes).
const MAX_RESPONSE: u64 = 16 << 20;

/// Where the agent's API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How long a request may wait ([`Timeouts::DEFAULT`]: [`CONNECT_TIMEOUT`],
/// [`RESPONSE_TIMEOUT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

impl Timeouts {
    pub const DEFAULT: Timeouts = Timeouts {
        connect: CONNECT_TIMEOUT,
        response: RESPONSE_TIMEOUT,
    };
}

/// Whole seconds (or their fraction) for a message.
fn secs(d: &Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Why a request got no HTTP response.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no adeline-trace agent is listening on {endpoint}: start one with 'adeline-trace run ...' (or pass --api-port/--api-socket)")]
    NotListening { endpoint: Endpoint },
    #[error("cannot reach the adeline-trace agent on {endpoint}: permission denied (its socket is mode 0600: run as the agent's user, e.g. with sudo)")]
    PermissionDenied { endpoint: Endpoint },
    #[error("cannot reach the adeline-trace agent on {endpoint}: {error}")]
    Connect {
        endpoint: Endpoint,
        error: io::Error,
    },
    #[error("the adeline-trace agent on {endpoint} did not take the connection within {}", secs(.after))]
    ConnectTimeout { endpoint: Endpoint, after: Duration },
    #[error("lost the connection to the adeline-trace agent on {endpoint}: {error}")]
    Io {
        endpoint: Endpoint,
        error: io::Error,
    },
    #[error("the adeline-trace agent on {endpoint} did not answer within {}", secs(.after))]
    Timeout { endpoint: Endpoint, after: Duration },
    #[error("the adeline-trace agent on {endpoint} closed the connection without answering")]
    Closed { endpoint: Endpoint },
    #[error("malformed HTTP response from {endpoint}: {problem}")]
    Malformed {
        endpoint: Endpoint,
        problem: &'static str,
    },
}

impl ClientError {
    /// True when the agent is not (or no longer) there, as opposed to a
    /// misbehaving one.
    pub fn agent_gone(&self) -> bool {
        matches!(
            self,
            ClientError::NotListening { .. } | ClientError::Io { .. } | ClientError::Closed { .. }
        )
    }
}

/// An HTTP response: status code and UTF-8 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The API's error message (`{"error": "..."}`) when the body is one,
    /// else a line naming the status.
    pub fn error_text(&self) -> String {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
        }
        match serde_json::from_str::<ErrorBody>(&self.body) {
            Ok(body) => body.error,
            Err(_) => format!("HTTP status {}", self.status),
        }
    }
}

/// `GET path_and_query` (e.g. `/api/summary?window=10s`).
pub fn get(endpoint: &Endpoint, path_and_query: &str) -> Result<Response, ClientError> {
    request(endpoint, "GET", path_and_query)
}

/// One request without a body; the whole response is read.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path_and_query: &str,
) -> Result<Response, ClientError> {
    request_within(endpoint, method, path_and_query, Timeouts::DEFAULT)
}

/// A connected stream of either kind.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        Ok(match endpoint {
            Endpoint::Tcp(addr) => Stream::Tcp(TcpStream::connect_timeout(addr, timeout)?),
            Endpoint::Unix(path) => Stream::Unix(connect_unix(path, timeout)?),
        })
    }

    /// Read and write timeouts of `left` (at least 1 ms: zero means none).
    fn wait_at_most(&self, left: Duration) -> io::Result<()> {
        let left = Some(left.max(Duration::from_millis(1)));
        match self {
            Stream::Tcp(s) => s.set_read_timeout(left).and(s.set_write_timeout(left)),
            Stream::Unix(s) => s.set_read_timeout(left).and(s.set_write_timeout(left)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf),
            Stream::Unix(s) => s.write_all(buf),
        }
    }
}

/// [`request`] within `timeouts`.
pub fn request_within(
    endpoint: &Endpoint,
    method: &str,
    path_and_query: &str,
    timeouts: Timeouts,
) -> Result<Response, ClientError> {
    let timed_out = || ClientError::Timeout {
        endpoint: endpoint.clone(),
        after: timeouts.response,
    };
    let io_error = |error: io::Error| match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
        _ => ClientError::Io {
            endpoint: endpoint.clone(),
            error,
        },
    };
    let mut stream = Stream::connect(endpoint, timeouts.connect).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ClientError::ConnectTimeout {
            endpoint: endpoint.clone(),
            after: timeouts.connect,
        },
        _ => connect_error(endpoint, e),
    })?;
    let deadline = Instant::now() + timeouts.response;
    let host = match endpoint {
        Endpoint::Tcp(addr) => addr.to_string(),
        Endpoint::Unix(_) => "localhost".to_string(),
    };
    let head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\
         User-Agent: adeline-trace/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.wait_at_most(timeouts.response).map_err(io_error)?;
    stream.write_all(head.as_bytes()).map_err(io_error)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.wait_at_most(left).map_err(io_error)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        }
        if raw.len() as u64 > MAX_RESPONSE {
            return Err(ClientError::Malformed {
                endpoint: endpoint.clone(),
                problem: "response larger than 16 MiB",
            });
        }
    }
    if raw.is_empty() {
        return Err(ClientError::Closed {
            endpoint: endpoint.clone(),
        });
    }
    parse_response(&raw).map_err(|problem| ClientError::Malformed {
        endpoint: endpoint.clone(),
        problem,
    })
}

fn connect_error(endpoint: &Endpoint, error: io::Error) -> ClientError {
    let endpoint = endpoint.clone();
    match error.kind() {
        // NotFound: the socket file does not exist.
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
            ClientError::NotListening { endpoint }
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { endpoint },
        _ => ClientError::Connect { endpoint, error },
    }
}

/// Parses a whole HTTP/1.x response (the connection was read to its end).
fn parse_response(raw: &[u8]) -> Result<Response, &'static str> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err("not an HTTP/1 response");
    }
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("bad status line")?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("bad header line")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = content_length {
        rest.get(..len)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| "body is not UTF-8")?;
    Ok(Response { status, body })
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("truncated chunk size")?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("chunk not followed by CRLF")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}xx",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\n{\"er\r\nC;x=y\r\nror\":\"gone\"}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.error_text().as_str()), (404, "gone"));
        let r = parse_response(b"HTTP/1.0 503 Busy\r\n\r\nnot json").unwrap();
        assert_eq!(r.error_text(), "HTTP status 503");
    }

    #[test]
    fn rejects_malformed_responses() {
        let cases: [(&[u8], &str); 6] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n",
                "no end of headers",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1 response"),
            (b"HTTP/1.1 abc OK\r\n\r\n", "bad status line"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}",
                "body shorter than Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\n{}",
                "truncated chunk",
            ),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header line"),
        ];
        for (raw, problem) in cases {
            assert_eq!(parse_response(raw), Err(problem));
        }
    }

    #[test]
    fn a_closed_port_says_no_agent_listens() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let at = Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port)));
        let e = get(&at, "/healthz").unwrap_err();
        assert!(e.agent_gone());
        assert_eq!(
            e.to_string(),
            format!(
                "no adeline-trace agent is listening on 127.0.0.1:{port}: start one with \
                 'adeline-trace run ...' (or pass --api-port/--api-socket)"
            )
        );
    }

    /// A server on 127.0.0.1 that accepts one connection and hands it to `serve`.
    fn fake_server(serve: impl FnOnce(TcpStream) + Send + 'static) -> Endpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                serve(stream);
            }
        });
        Endpoint::Tcp(addr)
    }

    const SHORT: Timeouts = Timeouts {
        connect: Duration::from_millis(300),
        response: Duration::from_millis(500),
    };

    #[test]
    fn a_server_that_trickles_or_says_nothing_times_out() {
        let trickle = fake_server(|mut s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(50));
                if s.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let silent = fake_server(|s| {
            std::thread::sleep(Duration::from_secs(3));
            drop(s);
        });
        for at in [trickle, silent] {
            let started = Instant::now();
            let e = request_within(&at, "GET", "/api/summary", SHORT).unwrap_err();
            let took = started.elapsed();
            assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
            assert!(!e.agent_gone());
            assert_eq!(
                e.to_string(),
                format!("the adeline-trace agent on {at} did not answer within 0.5s")
            );
            assert!(
                took >= SHORT.response && took < Duration::from_millis(1500),
                "{took:?}"
            );
        }
        assert_eq!(
            ClientError::Timeout {
                endpoint: Endpoint::Unix("/run/a.sock".into()),
                after: RESPONSE_TIMEOUT
            }
            .to_string(),
            "the adeline-trace agent on /run/a.sock did not answer within 5s"
        );
    }

    #[test]
    fn a_unix_socket_whose_backlog_is_full_times_out_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        // Listening with the smallest backlog, never accepting.
        let socket =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&socket2::SockAddr::unix(&path).unwrap())
            .unwrap();
        socket.listen(0).unwrap();
        let mut queued = Vec::new();
        loop {
            match connect_unix(&path, Duration::from_millis(50)) {
                Ok(s) => queued.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                    break;
                }
            }
            assert!(queued.len() < 10, "the backlog never filled");
        }
        let at = Endpoint::Unix(path.clone());
        let started = Instant::now();
        let e = request_within(&at, "GET", "/healthz", SHORT).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            e.to_string(),
            format!(
                "the adeline-trace agent on {} did not take the connection within 0.3s",
                path.display()
            )
        );
    }

    #[test]
    fn a_missing_socket_says_no_agent_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let e = get(&Endpoint::Unix(path.clone()), "/healthz").unwrap_err();
        assert!(matches!(e, ClientError::NotListening { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()));
    }
}
