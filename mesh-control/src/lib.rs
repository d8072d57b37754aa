//! `mesh-control`: the Weft control service as a library, so tests and benchmarks run it
//! in-process.
//!
//! - [`crd`]: Rust types for the Istio and Gateway API resources Weft reads (and their CRDs).
//! - [`enrollment`]: ambient enrolment and waypoint labels.
//! - [`model`]: the mesh's own model that nodes and waypoints receive.
//! - [`registry`]: objects in, validated model ([`model::Snapshot`]) out.
//! - [`source`]: the local config directory and the Kubernetes watchers feeding the registry.
//! - [`store`]: rebuilds and publishes snapshots to the [`feed`] hub.
//! - [`feed`]: the node and waypoint gRPC feeds; [`ca`]: the CA service; [`auth`]: node tokens.
//! - [`dump`]: a node's or waypoint's feed saved as a file.
//! - [`app`]: `build(config) -> Bound`, the whole service; [`config`]: its flags; [`http`]:
//!   health and metrics.

pub mod app;
pub mod auth;
pub mod ca;
pub mod config;
pub mod crd;
pub mod dump;
pub mod enrollment;
pub mod feed;
pub mod http;
pub mod model;
pub mod registry;
pub mod source;
pub mod store;

#[cfg(test)]
mod testing;
