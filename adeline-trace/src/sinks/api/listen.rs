//! Opening the API's listeners before anything is served: TCP on 127.0.0.1
//! only, and a unix socket created with mode 0600 (a stale socket file left
//! by a dead agent is replaced, a live agent's is refused). Every failure is
//! one [`ApiError`] line the run loop can print as is.
use std::{
    fs, io,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use socket2::{Domain, SockAddr, Socket, Type};
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};

/// Connections the kernel queues before the server accepts them. Under a
/// flood of connections a full queue drops new ones (the client retries a
/// second later, `/healthz` included), so it is deep; queued connections
/// cost the agent no descriptor (the kernel caps it at net.core.somaxconn).
const BACKLOG: i32 = 1024;

/// Why the API could not be served.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("cannot serve the API on {addr}: address in use; pass --api-port N or --no-api")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot serve the API on {addr}: {error}")]
    Tcp { addr: SocketAddr, error: io::Error },
    #[error("cannot serve the API on {}: another adeline-trace agent is listening there; stop it, or pass another --api-socket or --no-api", path.display())]
    SocketInUse { path: PathBuf },
    #[error("cannot serve the API on {}: the file exists and is not a socket; remove it or pass another --api-socket", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot serve the API on {}: {error}", path.display())]
    Socket { path: PathBuf, error: io::Error },
    #[error("the API server stopped: {0}")]
    Serve(io::Error),
}

/// Binds 127.0.0.1:`port` (0: an ephemeral port; read it back with
/// `local_addr`). Never binds another address.
pub async fn bind_tcp(port: u16) -> Result<TcpListener, ApiError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr).await.map_err(|error| {
        if error.kind() == io::ErrorKind::AddrInUse {
            ApiError::AddrInUse { addr }
        } else {
            ApiError::Tcp { addr, error }
        }
    })
}

/// A socket file this agent created; dropping it removes the file if it is
/// still the same file (another agent's socket at the same path is left alone).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// (device, inode) of the file right after bind.
    id: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Creates a listening unix socket at `path` with mode 0600. The mode is set
/// between bind and listen, so no other user can connect in between.
/// Must be called inside a tokio runtime.
pub fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), ApiError> {
    let fail = |error: io::Error| ApiError::Socket {
        path: path.to_path_buf(),
        error,
    };
    clear_stale(path)?;
    // Socket::new sets close-on-exec: a launched command does not inherit it.
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
    socket
        .bind(&SockAddr::unix(path).map_err(fail)?)
        .map_err(fail)?;
    let meta = fs::symlink_metadata(path).map_err(fail)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    };
    // From here on `file` removes the socket if anything fails.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(fail)?;
    socket.listen(BACKLOG).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    let listener = UnixListener::from_std(socket.into()).map_err(fail)?;
    Ok((listener, file))
}

/// Removes a socket file nobody listens on; refuses a live socket or a file
/// that is not a socket. A missing file is fine.
fn clear_stale(path: &Path) -> Result<(), ApiError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(ApiError::Socket {
                path: path.to_path_buf(),
                error,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    // A live agent whose backlog is full (a flood) does not take the
    // connection in time: it is in use all the same.
    match connect_unix(path, STALE_CHECK_TIMEOUT) {
        Ok(_) => Err(ApiError::SocketInUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ApiError::SocketInUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(|error| ApiError::Socket {
                path: path.to_path_buf(),
                error,
            })
        }
        Err(error) => Err(ApiError::Socket {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// How long [`clear_stale`] tries to connect to an existing socket.
const STALE_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects to the unix socket at `path`, waiting at most `timeout` for a
/// listener whose backlog is full (a blocking connect would wait for as
/// long as it stays full). `TimedOut` when it does not take the connection.
pub fn connect_unix(path: &Path, timeout: Duration) -> io::Result<std::os::unix::net::UnixStream> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let addr = SockAddr::unix(path)?;
    let deadline = Instant::now() + timeout;
    loop {
        match socket.connect(&addr) {
            Ok(()) => break,
            // A unix socket's backlog is full: EAGAIN, try again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the listener did not take the connection in time",
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    socket.set_nonblocking(false)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_binds_loopback_and_reports_a_taken_port() {
        let first = bind_tcp(0).await.unwrap();
        let addr = first.local_addr().unwrap();
        assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
        let e = bind_tcp(addr.port()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot serve the API on 127.0.0.1:{}: address in use; pass --api-port N or --no-api",
                addr.port()
            )
        );
    }

    #[tokio::test]
    async fn socket_is_0600_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (listener, file) = bind_unix(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(file.path(), path);
        drop(listener);
        drop(file);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A socket file nobody listens on, as a killed agent leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (_listener, _file) = bind_unix(&path).unwrap();
        // Now an agent listens there: a second one is refused, and the live
        // socket is left in place.
        let e = bind_unix(&path).unwrap_err();
        assert!(matches!(e, ApiError::SocketInUse { .. }), "{e}");
        assert!(e.to_string().contains("another adeline-trace agent"), "{e}");
        assert!(path.exists());
    }

    #[tokio::test]
    async fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        fs::write(&path, "keep me").unwrap();
        let e = bind_unix(&path).unwrap_err();
        assert!(matches!(e, ApiError::NotASocket { .. }), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn drop_leaves_a_replaced_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (listener, file) = bind_unix(&path).unwrap();
        drop(listener);
        // Someone else took the path over (ours is moved aside, so the new
        // file cannot reuse its inode number).
        fs::rename(&path, dir.path().join("old.sock")).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(path.exists());
    }
}
