//! HBONE: TCP connections carried as HTTP/2 `CONNECT` streams inside mutual TLS.
//!
//! Wire profile follows Istio ambient (see `shared/HBONE.md`): one `CONNECT` stream per
//! application connection, `:authority` = original destination `ip:port`, answers 200 (tunnel
//! up), 400 (bad request/authority), 401 (denied by policy) and 503 (upstream unreachable).
//!
//! - [`Client`]: opens tunnels over pooled connections keyed by (source identity, destination
//!   identities, destination address); each pooled connection carries up to
//!   [`MAX_STREAMS_PER_CONN`] streams and closes after [`POOL_IDLE_TIMEOUT`] unused.
//! - [`Server`]: accepts mTLS connections and `CONNECT` streams, validates the authority and
//!   hands each stream to a [`ConnectHandler`] that accepts (with a closure that serves the
//!   stream) or rejects with a [`Rejection`]. Node tunnel and waypoint both plug in here.
//! - [`headers`]: `forwarded`, `traceparent` and `baggage` helpers; [`authority`]: strict parsing.
//! - [`copy_bidirectional`]: half-close aware copying between a tunnel and a socket, with
//!   buffers that grow with a connection's volume and are released while it is idle.

pub mod authority;
pub mod baggage;
mod client;
mod copy;
pub mod headers;
mod server;
mod tunnel;

use std::time::Duration;

pub use client::{Client, ClientError, Dialer, Origin, OutboundRequest, TcpDialer};
pub use copy::{copy_bidirectional, MAX_BUFFER, MIN_BUFFER};
pub use server::{
    Accepted, ConnectHandler, ConnectRequest, Rejection, Server, ServerCertSelector, ServerError,
};
pub use tunnel::Tunnel;

/// HTTP/2 stream flow-control window (ztunnel: 4 MiB).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection flow-control window (ztunnel: 16 MiB).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// HTTP/2 maximum frame size (1 MiB).
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Concurrent streams per pooled connection.
pub const MAX_STREAMS_PER_CONN: usize = 100;
/// A pooled connection with no stream for this long is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// HTTP/2 PING interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// A PING unanswered this long closes the connection.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on TCP connect, TLS handshake and the CONNECT response.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests;
