//! The Weft node tunnel as a library, so tests and benchmarks run it in-process.
//!
//! - [`app`]: builds everything from a [`config::Config`] and returns [`app::Bound`].
//! - [`ca_source`]: the certificate source the `ca` config describes.
//! - [`config`]: the static YAML configuration; [`state`]: the validated mesh view;
//!   [`route`]: outbound path choice.
//! - [`proxy`]: outbound (15001), inbound HBONE (15008) and inbound plaintext (15006).
//! - [`policy`]: L4 AuthorizationPolicy evaluation and re-checks on change.
//! - [`ready`]: readiness (15021) with the reasons a node is not ready.
//! - [`certs`]: per-identity certificates with rotation; [`socket`]: the socket factory.
//! - [`metrics`]: Istio metrics and the access log (served through `mesh_core::ops`).
//! - [`ebpf_metrics`]: the eBPF programs' counters as `weft_ebpf_events_total`.
//! - [`feed`]: the subscription to mesh-control's node feed (resume, backoff, last config kept).
//! - [`capture`]: the eBPF redirect configuration from the node's addresses and listeners.
//! - [`cni`]: answers the `weft-cni` plugin, so pods are captured before their containers start.
//! - [`enrollment`]: keeps the eBPF enrollment map in step with this node's pods.
//! - [`inpod`]: HBONE listeners inside local pods' network namespaces (`<pod ip>:15008`).
//! - [`pod_netns`]: finds pods' network namespaces (the eBPF enrollment key) by pod IP.
//! - [`pod_scan`]: one periodic namespace scan shared by enrollment and in-pod listeners.
//! - [`redirect`]: loads and attaches the eBPF programs that send enrolled pods' traffic to the
//!   tunnel, and keeps the enrollment maps up to date.

mod admin;
pub mod app;
pub mod ca_source;
pub mod capture;
pub mod certs;
pub mod cni;
pub mod config;
pub mod ebpf_metrics;
pub mod enrollment;
pub mod feed;
pub mod inpod;
pub mod metrics;
pub mod netlink;
pub mod pod_net;
pub mod pod_netns;
pub mod pod_scan;
pub mod policy;
pub mod proxy;
pub mod ready;
pub mod redirect;
pub mod route;
pub mod socket;
pub mod state;
