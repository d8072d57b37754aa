//! L7 authorization (Istio `AuthorizationPolicy` semantics, HTTP attributes), fail closed.
//!
//! Policies come from the feed's `Authorization` messages (live, or a saved feed), converted once
//! into the shared model ([`mesh_core::authz::Policy`]) by [`crate::feed`]; this module scopes them
//! to the request's service and asks the shared evaluator, so nodes and waypoints agree on
//! semantics. There is no second, waypoint-only policy schema.
//!
//! Decision: if any DENY policy matches, deny; else if there is no ALLOW policy, allow; else
//! allow only when an ALLOW policy matches. A policy matches when any of its rules does; a
//! policy without rules matches nothing. A rule matches when `from` (any source), `to` (any
//! operation) and every `when` condition hold; empty sections match everything. Values use
//! Istio's forms: exact, `prefix*`, `*suffix`, and `*` (present and non-empty).
//!
//! Principals come from the peer's SPIFFE identity, which the HBONE layer supplies. Without
//! one, `principals` never match (so ALLOW-by-principal denies) and `not_principals` always do
//! (so DENY-unless-principal denies): both fail closed.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use http::request::Parts;
use mesh_core::authz::{self, ConnectionAttributes, Decision, RequestAttributes, RequestAuth};

use crate::proxy::Peer;

/// The original client behind `hops` trusted proxies, as Envoy's `xff_num_trusted_hops`
/// (Istio `numTrustedProxies`): the `hops`-th address from the right of `X-Forwarded-For`.
/// `None` (use the peer address) with no trusted hops, too few entries or an unparseable one.
pub fn remote_ip(headers: &http::HeaderMap, hops: u32) -> Option<IpAddr> {
    if hops == 0 {
        return None;
    }
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all(http::header::HeaderName::from_static("x-forwarded-for")) {
        entries.extend(value.to_str().ok()?.split(',').map(str::trim));
    }
    let index = entries.len().checked_sub(usize::try_from(hops).ok()?)?;
    entries[index].parse().ok()
}

/// A compiled policy from the control feed with the route keys (`vip:port`) it applies to.
#[derive(Debug, Clone)]
pub struct ScopedPolicy {
    /// The policy.
    pub policy: authz::Policy,
    /// Route keys (CONNECT authorities `vip:port`) of the targeted services; `None`: every
    /// request. Requests without a CONNECT authority are checked against every scoped policy,
    /// which can only deny more.
    pub scope: Option<BTreeSet<String>>,
}

impl ScopedPolicy {
    fn applies(&self, route_key: Option<&str>) -> bool {
        match (&self.scope, route_key) {
            (Some(keys), Some(key)) => keys.contains(key),
            _ => true,
        }
    }
}

/// The policies in force, with their scopes.
#[derive(Debug, Default)]
pub struct Authorizer {
    scoped: Vec<ScopedPolicy>,
}

impl Authorizer {
    /// An authorizer over `scoped` policies.
    pub fn new(scoped: Vec<ScopedPolicy>) -> Self {
        Self { scoped }
    }

    /// `Ok` to allow; `Err(policy name)` to deny.
    pub fn check(
        &self,
        req: &Parts,
        host: &str,
        peer: &Peer,
        auth: &RequestAuth,
    ) -> Result<(), String> {
        let connection = ConnectionAttributes {
            source_ip: peer.addr.ip(),
            source_principal: peer
                .identity
                .as_deref()
                .map(|id| strip_spiffe(id).to_owned()),
            // Policies see the CONNECT authority (service VIP and port); without one (the plain
            // listener) no destination address or port matches.
            destination_ip: peer
                .authority
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip()),
            destination_port: peer.authority.map_or(0, |a| a.port()),
        };
        let route_key = peer.authority.map(|a| a.to_string());
        let scoped = self
            .scoped
            .iter()
            .filter(|s| s.applies(route_key.as_deref()))
            .map(|s| &s.policy);
        let request = RequestAttributes {
            method: req.method.as_str(),
            path: req.uri.path(),
            host,
            headers: &req.headers,
            remote_ip: remote_ip(&req.headers, peer.trusted_proxy_hops),
            sni: peer.sni.as_deref(),
            auth: Some(auth),
        };
        match authz::evaluate(scoped, &connection, Some(&request)) {
            Decision::Allow => Ok(()),
            Decision::DeniedByPolicy { policy } => Err(policy),
            Decision::NotAllowed => Err("no ALLOW policy matched".to_owned()),
        }
    }
}

fn strip_spiffe(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

#[cfg(test)]
mod tests;
