//! L4 authorization with Istio AuthorizationPolicy semantics, and re-checking live connections
//! when policy changes.
//!
//! Evaluation for a connection to workload W: the policies that apply are those in W's
//! namespace or the root namespace whose selector (if any) matches W's labels. If any applicable
//! DENY matches, deny. Otherwise, if no ALLOW applies, allow; if some ALLOW applies, allow only
//! when one matches. Anything that cannot be evaluated denies (fail closed).
//!
//! - [`rules`]: which policies apply to a destination (namespace, root namespace, selector);
//!   the decision is [`mesh_core::authz::evaluate`], shared with the waypoint.
//! - [`tracker`]: live connections, closed when a policy update no longer allows them or their
//!   local workload leaves the mesh.

pub mod rules;
pub mod tracker;

use std::net::IpAddr;

use mesh_core::identity::SpiffeId;
pub use rules::{Policies, Scope, ScopedPolicy};
pub use tracker::{Authorizer, ConnectionGuard, Revocation};

/// What a policy decision is made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Verified peer identity; `None` for plaintext.
    pub source_identity: Option<SpiffeId>,
    /// Source IP (the original client).
    pub source_ip: IpAddr,
    /// Destination workload namespace.
    pub dest_namespace: String,
    /// Destination workload IP.
    pub dest_ip: IpAddr,
    /// Destination workload name (for logs).
    pub dest_workload: String,
    /// Destination port.
    pub dest_port: u16,
}

pub use mesh_core::authz::Decision;
