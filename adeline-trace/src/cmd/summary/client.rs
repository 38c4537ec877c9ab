//! A minimal blocking HTTP/1.1 client for the agent's API: one request per
//! connection (`Connection: close`) over TCP or a unix socket, no
//! dependencies beyond std. It reads Content-Length, chunked and
//! read-to-close bodies; that is all the API sends.
use std::{
    fmt, io,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

/// How long to wait for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait on a read or write once connected.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
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
    #[error("lost the connection to the adeline-trace agent on {endpoint}: {error}")]
    Io {
        endpoint: Endpoint,
        error: io::Error,
    },
    #[error("the adeline-trace agent on {endpoint} did not answer within {}s", IO_TIMEOUT.as_secs())]
    Timeout { endpoint: Endpoint },
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
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    /// The body's bytes (a profile in pprof is binary).
    pub bytes: Vec<u8>,
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
    request_within(endpoint, method, path_and_query, IO_TIMEOUT)
}

/// `GET` with a longer wait for the answer (a profile is named and
/// rendered on request; the first time a library is read takes a while).
pub fn get_within(
    endpoint: &Endpoint,
    path_and_query: &str,
    timeout: Duration,
) -> Result<Response, ClientError> {
    request_within(endpoint, "GET", path_and_query, timeout)
}

fn request_within(
    endpoint: &Endpoint,
    method: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let io_error = |error: io::Error| match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            endpoint: endpoint.clone(),
        },
        _ => ClientError::Io {
            endpoint: endpoint.clone(),
            error,
        },
    };
    let (host, mut stream): (String, Box<dyn ReadWrite>) = match endpoint {
        Endpoint::Tcp(addr) => {
            let stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
                .map_err(|e| connect_error(endpoint, e))?;
            set_io_timeouts(&stream, timeout).map_err(io_error)?;
            (addr.to_string(), Box::new(stream))
        }
        Endpoint::Unix(path) => {
            let stream = UnixStream::connect(path).map_err(|e| connect_error(endpoint, e))?;
            set_io_timeouts(&stream, timeout).map_err(io_error)?;
            ("localhost".to_string(), Box::new(stream))
        }
    };
    let head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\
         User-Agent: adeline-trace/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(head.as_bytes()).map_err(io_error)?;
    stream.flush().map_err(io_error)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE + 1)
        .read_to_end(&mut raw)
        .map_err(io_error)?;
    if raw.is_empty() {
        return Err(ClientError::Closed {
            endpoint: endpoint.clone(),
        });
    }
    if raw.len() as u64 > MAX_RESPONSE {
        return Err(ClientError::Malformed {
            endpoint: endpoint.clone(),
            problem: "response larger than 16 MiB",
        });
    }
    parse_response(&raw).map_err(|problem| ClientError::Malformed {
        endpoint: endpoint.clone(),
        problem,
    })
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

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
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
    })
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

/// Read and write timeouts of [`IO_TIMEOUT`] on a TCP or unix stream.
fn set_io_timeouts(stream: &impl std::os::fd::AsFd, timeout: Duration) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))
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

    #[test]
    fn a_missing_socket_says_no_agent_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let e = get(&Endpoint::Unix(path.clone()), "/healthz").unwrap_err();
        assert!(matches!(e, ClientError::NotListening { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()));
    }
}
