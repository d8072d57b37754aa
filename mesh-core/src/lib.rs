//! Code shared by more than one Weft component.
//!
//! - [`drain`]: graceful-drain primitive every listener runs under.
//! - [`telemetry`]: `tracing` set-up (plain or JSON logs) shared by the binaries.
//! - [`signal`]: waits for SIGTERM/SIGINT so binaries shut down cleanly.
//! - [`identity`]: SPIFFE IDs, workload certificates, CSRs and the CA primitive.
//! - [`tls`]: mutual-TLS client/server configs over SPIFFE identities, with rotation.
//! - [`proto`]: the control-plane protocol (generated gRPC/protobuf code).
//! - [`feed`]: feed-subscription plumbing (status, backoff, channel) for nodes and waypoints.
//! - [`feed_file`]: a feed saved as a file (YAML/JSON of the protocol's messages).
//! - [`hbone`]: HTTP/2 CONNECT tunnels (client pool and server) per Istio's HBONE.
//! - [`ops`]: the HTTP endpoint for metrics, readiness and debug pages every binary serves.
//! - [`authz`]: authorization policy decisions (Istio semantics) for nodes (L4) and waypoints (L7).

pub mod authz;
pub mod backoff;
pub mod control;
pub mod drain;
pub mod feed;
pub mod feed_file;
pub mod hbone;
pub mod identity;
pub mod memory;
pub mod ops;
pub mod proto;
pub mod signal;
pub mod telemetry;
pub mod tls;
