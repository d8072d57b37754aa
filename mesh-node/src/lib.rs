//! The Weft node tunnel as a library, so tests and benchmarks run it in-process.
//!
//! - [`app`]: builds everything from a [`config::Config`] and returns [`app::Bound`].
//! - [`config`]: the static YAML configuration; [`state`]: the validated mesh view;
//!   [`route`]: outbound path choice.
//! - [`proxy`]: outbound (15001), inbound HBONE (15008) and inbound plaintext (15006).
//! - [`policy`]: L4 AuthorizationPolicy evaluation and re-checks on change.
//! - [`certs`]: per-identity certificates with rotation; [`socket`]: the socket factory.
//! - [`metrics`]: Istio metrics and the access log (served through `mesh_core::ops`).
//! - [`feed`]: the subscription to mesh-control's node feed (resume, backoff, last config kept).
//! - [`enrollment`]: keeps the eBPF enrollment map in step with this node's pods.
//! - [`pod_netns`]: finds pods' network namespaces (the eBPF enrollment key) by pod IP.
//! - [`redirect`]: loads and attaches the eBPF programs that send enrolled pods' traffic to the
//!   tunnel, and keeps the enrollment maps up to date.

pub mod app;
pub mod certs;
pub mod config;
pub mod enrollment;
pub mod feed;
pub mod metrics;
pub mod pod_netns;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod route;
pub mod socket;
pub mod state;
