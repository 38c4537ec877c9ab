//! The agent's HTTP API (docs/api.md): read-only JSON over TCP on 127.0.0.1
//! and/or a unix socket (mode 0600), served with axum from a
//! [`SnapshotSource`](crate::sinks::SnapshotSource). The small blocking
//! client `adeline-trace summary` uses to query it is in cmd/summary/.
//!
//! - [`listen`]: binding the listeners, socket file hygiene, [`ApiError`]
//! - [`routes`]: the endpoints and their JSON error bodies
//! - [`server`]: [`serve`], the [`ApiHandle`] of a running server, and the
//!   [`ApiThread`] the agent runs it on
//! - [`limits`] and [`conn`]: what a client can make the server hold
//!   (connections, time, memory) and the connection loop that enforces it
//! - [`cache`]: snapshots computed at most every 100 ms, whatever the load
#[cfg(test)]
mod abuse_tests;
pub mod cache;
pub mod conn;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod limits;
pub mod listen;
pub mod routes;
pub mod server;

pub use limits::Limits;
pub use listen::ApiError;

use std::path::PathBuf;

/// Default TCP port of the agent's API.
pub const DEFAULT_API_PORT: u16 = 7878;

/// Where the HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSpec {
    /// TCP port on 127.0.0.1 (None: no TCP listener).
    pub port: Option<u16>,
    /// Unix socket path (mode 0600).
    pub socket: Option<PathBuf>,
}
pub use server::{serve, serve_with, ApiHandle, ApiThread};
