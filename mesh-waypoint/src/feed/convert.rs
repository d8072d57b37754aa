//! `pb::WaypointConfig` -> domain [`WaypointConfig`], failing closed piece by piece.
//!
//! The conversion never fails as a whole: every piece that cannot be used is reported as a
//! [`ConvertError`] (logged by the caller with its route or policy key) and replaced by
//! something that can only refuse more: a route by a 503 answer, a policy by deny-all, an
//! endpoint by its absence.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use mesh_core::{
    authz::{PathNormalization, Policy, PolicyConvertError},
    proto::control::v1 as pb,
};

use http::HeaderName;

use super::{pods, routes, services};
use crate::{
    authn::{self, JwtProvider, KeySource, Keys, Location, ScopedAuthn},
    authz::ScopedPolicy,
    config::WaypointConfig,
    route::RouteError,
};

/// Why one piece of the feed could not be used as sent.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A workload address is neither 4 nor 16 bytes.
    #[error("workload {workload}: address of {len} bytes is not ipv4 or ipv6")]
    BadAddress { workload: String, len: usize },
    /// A workload has no address.
    #[error("workload {workload} has no address")]
    NoAddress { workload: String },
    /// A workload identity is not a SPIFFE id; its endpoints are left out.
    #[error("workload {workload}: identity {identity:?} is not a spiffe id")]
    BadIdentity { workload: String, identity: String },
    /// An endpoint names a workload the feed does not carry.
    #[error("service {service}: endpoint workload {workload} is not in the feed")]
    UnknownWorkload { service: String, workload: String },
    /// No endpoint port can be derived for a service port.
    #[error("service {service}: no target port for port {port} on workload {workload}")]
    NoTargetPort {
        service: String,
        port: u32,
        workload: String,
    },
    /// A port is 0 or above 65535.
    #[error("{what}: port {port} is out of range")]
    BadPort { what: String, port: u32 },
    /// A backend or mirror names a service (or port) the waypoint has no endpoints for.
    #[error("route {route}: backend {host}:{port} is not a known service port")]
    UnknownBackend {
        route: String,
        host: String,
        port: u32,
    },
    /// A oneof that must be set is empty (a newer control plane?).
    #[error("route {route}: {what} has no value set")]
    EmptyOneof { route: String, what: &'static str },
    /// A status code is not a valid HTTP status.
    #[error("route {route}: status {status} is not valid")]
    BadStatus { route: String, status: u32 },
    /// The converted route does not compile.
    #[error("route {route}: {source}")]
    Route {
        route: String,
        #[source]
        source: RouteError,
    },
    /// A traffic policy names a load balancer the waypoint does not implement.
    #[error("traffic policy {policy}: unsupported load balancer {value:?}, using least request")]
    LoadBalancer { policy: String, value: String },
    /// A traffic policy's consistent hash has no key.
    #[error("traffic policy {policy}: consistent hash without a key, using least request")]
    HashKey { policy: String },
    /// The path normalization mode is not one this build knows (a newer control plane?).
    #[error("unknown path normalization value {0}; using the default, MERGE_SLASHES")]
    PathNormalization(i32),
    /// A JWT rule did not convert; tokens of its issuer are refused.
    #[error("request authentication {key}: {message}; tokens of issuer {issuer:?} are refused")]
    Jwt {
        key: String,
        issuer: String,
        message: String,
    },
    /// A policy did not convert and denies everything in its scope instead.
    #[error("{0}; denying all requests in its scope")]
    Policy(#[from] PolicyConvertError),
}

/// The result of a conversion: the config and everything that had to be left out or closed.
#[derive(Debug)]
pub struct Converted {
    /// Feed instance.
    pub feed_id: String,
    /// Version.
    pub version: u64,
    /// The domain configuration.
    pub waypoint: WaypointConfig,
    /// Pieces that failed closed.
    pub problems: Vec<ConvertError>,
}

/// Who this waypoint is, to resolve policies that target it (`Gateway` kind).
#[derive(Debug, Clone, Default)]
pub struct WaypointName {
    /// Namespace of the waypoint Service.
    pub namespace: String,
    /// Name of the waypoint Service.
    pub name: String,
}

/// A bound service with its derived names.
#[derive(Debug)]
pub(super) struct ServiceView<'a> {
    pub(super) wire: &'a pb::Service,
    /// FQDN first, then the short forms.
    pub(super) names: Vec<String>,
    pub(super) vips: Vec<IpAddr>,
    /// Bound to this waypoint (else only a backend of ingress routes: no mesh virtual hosts,
    /// so the waypoint never relays mesh traffic for a service it does not front).
    pub(super) bound: bool,
}

impl ServiceView<'_> {
    /// Route keys of one port: every name and every VIP with the port.
    pub(super) fn keys(&self, port: u16) -> Vec<String> {
        let names = self.names.iter().map(|n| format!("{n}:{port}"));
        let vips = self
            .vips
            .iter()
            .map(move |ip| SocketAddr::new(*ip, port).to_string());
        names.chain(vips).collect()
    }

    /// Service ports that fit in a `u16`.
    pub(super) fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.wire
            .ports
            .iter()
            .filter_map(|p| u16::try_from(p.port).ok().filter(|p| *p != 0))
    }
}

/// Services by FQDN.
pub(super) type ServiceIndex<'a> = BTreeMap<String, ServiceView<'a>>;

/// The domain destination name of a service port.
pub(super) fn destination_name(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// Converts one complete feed message.
pub fn convert(wire: &pb::WaypointConfig, me: &WaypointName) -> Converted {
    let mut problems = Vec::new();
    let index = services::index(&wire.services, me, &mut problems);
    let workloads = services::workloads(&wire.workloads, &mut problems);
    let mut destinations = services::destinations(wire, &index, &workloads, &mut problems);
    let mut vhosts = routes::routes(&wire.routes, &index, &destinations, &mut problems);
    let (pod_destinations, pod_routes) = pods::pods(&index, &workloads, me);
    destinations.extend(pod_destinations);
    vhosts.mesh.extend(pod_routes);
    let scoped_policies = policies(&wire.policies, &index, me, &mut problems);
    let request_authn =
        request_authentications(&wire.request_authentications, &index, me, &mut problems);
    Converted {
        feed_id: wire.feed_id.clone(),
        version: wire.version,
        waypoint: WaypointConfig {
            routes: vhosts.mesh,
            ingress_routes: Some(vhosts.ingress),
            destinations,
            scoped_policies,
            request_authn,
            path_normalization: path_normalization(wire.path_normalization, &mut problems),
            ..WaypointConfig::default()
        },
        problems,
    }
}

/// The mode the control plane chose; an unknown one becomes the default, which refuses every
/// ambiguous spelling.
fn path_normalization(wire: i32, problems: &mut Vec<ConvertError>) -> PathNormalization {
    match pb::PathNormalization::try_from(wire) {
        Ok(pb::PathNormalization::Default) => PathNormalization::default(),
        Ok(pb::PathNormalization::None) => PathNormalization::None,
        Ok(pb::PathNormalization::Base) => PathNormalization::Base,
        Ok(pb::PathNormalization::MergeSlashes) => PathNormalization::MergeSlashes,
        Ok(pb::PathNormalization::DecodeAndMergeSlashes) => {
            PathNormalization::DecodeAndMergeSlashes
        }
        Err(_) => {
            problems.push(ConvertError::PathNormalization(wire));
            PathNormalization::default()
        }
    }
}

fn request_authentications(
    wire: &[pb::RequestAuthentication],
    index: &ServiceIndex<'_>,
    me: &WaypointName,
    problems: &mut Vec<ConvertError>,
) -> Vec<ScopedAuthn> {
    wire.iter()
        .map(|r| ScopedAuthn {
            key: r.key.clone(),
            scope: scope(&r.targets, index, me),
            providers: r
                .rules
                .iter()
                .map(|rule| jwt_provider(&r.key, rule, problems))
                .collect(),
            refuse_all: r.refuse_all,
        })
        .collect()
}

/// The longest `jwks_timeout_ms` honoured: a request waits at most this for keys.
const MAX_JWKS_TIMEOUT: Duration = Duration::from_secs(30);

/// Compiles one JWT rule; whatever does not convert makes its issuer's tokens refused.
fn jwt_provider(key: &str, rule: &pb::JwtRule, problems: &mut Vec<ConvertError>) -> JwtProvider {
    let mut unusable = false;
    let mut report = |message: String| {
        problems.push(ConvertError::Jwt {
            key: key.to_owned(),
            issuer: rule.issuer.clone(),
            message,
        });
    };
    let mut header = |text: &str| match HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            report(format!("{text:?} is not a header name"));
            None
        }
    };
    let mut locations = Vec::new();
    for h in &rule.from_headers {
        match header(&h.name) {
            Some(name) => locations.push(Location::Header {
                name,
                prefix: h.prefix.clone(),
            }),
            None => unusable = true,
        }
    }
    locations.extend(rule.from_params.iter().cloned().map(Location::Param));
    locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        locations = Location::defaults();
    }
    let mut claim_headers = Vec::new();
    for o in &rule.output_claim_to_headers {
        match header(&o.header) {
            Some(name) => claim_headers.push((name, o.claim.clone())),
            None => unusable = true,
        }
    }
    let payload_header = match rule.output_payload_to_header.as_str() {
        "" => None,
        text => {
            let name = header(text);
            unusable |= name.is_none();
            name
        }
    };
    let timeout = match rule.jwks_timeout_ms {
        0 => authn::DEFAULT_FETCH_TIMEOUT,
        ms => Duration::from_millis(ms).min(MAX_JWKS_TIMEOUT),
    };
    let keys = if !rule.jwks.is_empty() {
        match authn::jwks::parse_key_set(rule.jwks.as_bytes()) {
            Ok(keys) => Keys::Inline(Arc::new(keys)),
            Err(message) => {
                report(message);
                Keys::Unusable
            }
        }
    } else if !rule.jwks_uri.is_empty() {
        Keys::Remote {
            source: KeySource::Uri(rule.jwks_uri.clone()),
            timeout,
        }
    } else {
        Keys::Remote {
            source: KeySource::Discovery {
                issuer: rule.issuer.clone(),
            },
            timeout,
        }
    };
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        keys: if unusable { Keys::Unusable } else { keys },
        locations,
        forward_original_token: rule.forward_original_token,
        claim_headers,
        payload_header,
        space_delimited: rule.space_delimited_claims.clone(),
    }
}

fn policies(
    wire: &[pb::Authorization],
    index: &ServiceIndex<'_>,
    me: &WaypointName,
    problems: &mut Vec<ConvertError>,
) -> Vec<ScopedPolicy> {
    wire.iter()
        .map(|p| {
            let (policy, error) = Policy::from_proto_fail_closed(p);
            problems.extend(error.map(ConvertError::from));
            ScopedPolicy {
                policy,
                scope: scope(&p.targets, index, me),
            }
        })
        .collect()
}

/// `None` (every request) when untargeted or targeting this waypoint; else the route keys of
/// the targeted services (possibly none: the policy then applies nowhere here).
fn scope(
    targets: &[pb::PolicyTarget],
    index: &ServiceIndex<'_>,
    me: &WaypointName,
) -> Option<BTreeSet<String>> {
    let is_me = |t: &pb::PolicyTarget| {
        t.kind == "Gateway" && t.namespace == me.namespace && t.name == me.name
    };
    if targets.is_empty() || targets.iter().any(is_me) {
        return None;
    }
    let targeted = |s: &ServiceView<'_>| {
        targets.iter().any(|t| {
            matches!(t.kind.as_str(), "Service" | "ServiceEntry")
                && t.namespace == s.wire.namespace
                && t.name == s.wire.name
        })
    };
    let keys = index
        .values()
        .filter(|s| targeted(s))
        .flat_map(|s| {
            s.ports()
                .flat_map(|p| {
                    s.vips
                        .iter()
                        .map(move |ip| SocketAddr::new(*ip, p).to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Some(keys)
}
