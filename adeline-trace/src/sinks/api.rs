//! HTTP API of the agent (axum): TCP on 127.0.0.1 and a unix socket.
