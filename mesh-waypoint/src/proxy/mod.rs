//! The L7 proxy: one request in, one response out.
//!
//! Order of work for a request: local rate limit, path normalization (400), request
//! authentication (401), authorization (403), route selection (404),
//! local answers (redirect, direct response), header hygiene and rewrites, then the upstream
//! stack `fault -> timeout -> retry -> circuit breaker -> attempt`. Every failure becomes a
//! response in exactly one place, [`ProxyError::into_response`].

mod error;
pub mod forward;
pub mod headers;
pub mod mirror;
mod upgrade;

use std::{borrow::Cow, convert::Infallible, net::SocketAddr, sync::Arc};

use http::{request::Parts, Request, Response};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use mesh_core::{
    authz::{path, PathError, PathNormalization},
    hbone::baggage::WorkloadMeta,
};
use tower::{ServiceBuilder, ServiceExt};

pub use self::{
    error::{ProxyError, ResponseFlags},
    forward::UpstreamAddr,
};
use crate::{
    authn::Authenticator,
    authz::Authorizer,
    body::{self, Body},
    config::WaypointConfig,
    destination::Destinations,
    resilience::{
        circuit::CircuitBreakerLayer,
        fault::FaultLayer,
        overrides::Overrides,
        ratelimit::TokenBucket,
        retry::{RetryLayer, RetryPolicy},
        timeout::TimeoutLayer,
    },
    rng::{SharedRng, ThreadRandom},
    route::{action, Action, RouteError, RouteTable, Selected},
    telemetry::{Metrics, RequestLog, TraceContext},
    upstream::{DownstreamAddr, Transport},
};

/// Who sent the request, as far as the proxy knows.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Downstream socket address.
    pub addr: SocketAddr,
    /// SPIFFE identity of the peer, supplied by the HBONE layer (`None` on plain HTTP).
    pub identity: Option<String>,
    /// The HBONE `CONNECT` authority (service VIP and port; `None` on plain HTTP). When set it
    /// selects the virtual host, keyed `vip:port`, whatever the `Host` header says.
    pub authority: Option<SocketAddr>,
    /// Source workload from the HBONE `baggage` (`None` on plain HTTP or when not sent).
    pub workload: Option<WorkloadMeta>,
    /// On an ingress listener (the edge of the mesh), the downstream scheme, `http` or `https`,
    /// which replaces any `x-forwarded-proto` the client sent, as Envoy does at the edge.
    /// `None` inside the mesh (HBONE), where the header passes through.
    pub edge_scheme: Option<&'static str>,
    /// Proxies in front of an ingress listener whose `X-Forwarded-For` entries are believed
    /// when finding the original client for `remoteIpBlocks` (Istio `numTrustedProxies`);
    /// always 0 inside the mesh, where the peer address is the client.
    pub trusted_proxy_hops: u32,
    /// The TLS server name the client asked for (HTTPS ingress), for `connection.sni`.
    pub sni: Option<String>,
}

/// Errors building the proxy from configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The routes do not compile.
    #[error("invalid routes: {0}")]
    Routes(#[from] RouteError),
}

/// The proxy's compiled state.
#[derive(Debug)]
pub struct Proxy {
    /// Virtual hosts for HBONE requests (by CONNECT authority) and, in static mode, for all.
    table: RouteTable,
    /// Feed mode: virtual hosts for plain (ingress) requests, by `Host`.
    ingress: Option<RouteTable>,
    destinations: Destinations,
    authn: Authenticator,
    authz: Authorizer,
    rate_limit: Option<Arc<TokenBucket>>,
    rng: SharedRng,
    metrics: Arc<Metrics>,
    mirrors: mirror::Mirrors,
    path_normalization: PathNormalization,
}

impl Proxy {
    /// Compiles the configuration; requests are recorded in `metrics`.
    pub fn new(
        config: &WaypointConfig,
        rng: SharedRng,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        Self::with_transport(config, rng, metrics, &Transport::Plain)
    }

    /// [`Proxy::new`] reaching endpoints over `transport`.
    pub fn with_transport(
        config: &WaypointConfig,
        rng: SharedRng,
        metrics: Arc<Metrics>,
        transport: &Transport,
    ) -> Result<Self, BuildError> {
        Self::next_version(config, rng, metrics, transport, None)
    }

    /// Compiles the next configuration, keeping `previous`'s unchanged destinations (and their
    /// connections and health state).
    pub fn next_version(
        config: &WaypointConfig,
        rng: SharedRng,
        metrics: Arc<Metrics>,
        transport: &Transport,
        previous: Option<&Proxy>,
    ) -> Result<Self, BuildError> {
        // Fetched key sets outlive configuration versions, as endpoints' connections do.
        let jwks = previous.map_or_else(Arc::default, |p| p.authn.jwks().clone());
        let empty = Destinations::default();
        let previous = previous.map_or(&empty, |p| &p.destinations);
        Ok(Self {
            table: RouteTable::new(&config.routes, &config.destinations)?,
            ingress: config
                .ingress_routes
                .as_ref()
                .map(|routes| RouteTable::new(routes, &config.destinations))
                .transpose()?,
            destinations: Destinations::reusing(&config.destinations, transport, previous),
            authn: Authenticator::new(config.request_authn.clone(), jwks),
            authz: Authorizer::new(config.scoped_policies.clone()),
            rate_limit: config
                .rate_limit
                .as_ref()
                .map(|c| Arc::new(TokenBucket::new(c))),
            rng,
            metrics,
            mirrors: mirror::Mirrors::default(),
            path_normalization: config.path_normalization,
        })
    }

    /// Serves one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<Body>, Infallible> {
        let req = req.map(body::boxed);
        // Ids come from the CSPRNG, not the injectable source, so tests' scripted rolls map
        // one-to-one to routing decisions.
        let trace = TraceContext::from_headers(req.headers(), &ThreadRandom);
        let mut log = RequestLog::start(&req, peer.addr, peer.identity.as_deref(), trace);
        log.workload.clone_from(&peer.workload);
        let req = req.map(|b| log.count_request(b));
        let result = match &self.rate_limit {
            Some(bucket) if !bucket.try_acquire() => Err(ProxyError::RateLimited),
            _ => self.route_and_forward(req, &peer, &mut log).await,
        };
        let grpc = log.protocol == "grpc";
        let response = result.unwrap_or_else(|err| {
            tracing::debug!(error = %err, flag = err.flag(), "request failed locally");
            if grpc {
                err.into_grpc_response()
            } else {
                err.into_response()
            }
        });
        Ok(log.finish(response, self.metrics.clone()))
    }

    /// Whether an HBONE `CONNECT` to `authority` reaches a virtual host here (a bound service
    /// `vip:port` or a bound pod `ip:port`).
    pub fn serves(&self, authority: SocketAddr) -> bool {
        self.table.has_host(&authority.to_string())
    }

    /// The compiled destination named `name` (for tests and debugging).
    pub fn destination(&self, name: &str) -> Option<&Arc<crate::destination::Destination>> {
        self.destinations.get(name)
    }

    async fn route_and_forward(
        &self,
        req: Request<Body>,
        peer: &Peer,
        log: &mut RequestLog,
    ) -> Result<Response<Body>, ProxyError> {
        let authority = headers::authority(&req).ok_or(ProxyError::MissingHost)?;
        let host = action::strip_port(&authority).to_ascii_lowercase();
        log.host.clone_from(&host);
        let upgrade = headers::is_upgrade(&req);
        let (mut parts, body) = req.into_parts();
        // Routing, policy and the upstream all see the one normalized path.
        normalize_path(&mut parts, self.path_normalization)?;
        // Tokens are verified (401) before policy reads the principal they carry.
        let route_key = peer.authority.map(|a| a.to_string());
        let auth = self
            .authn
            .authenticate(&mut parts, route_key.as_deref())
            .await?;
        // Authorization runs before routing, as Envoy's RBAC filter does: a denied request
        // learns nothing about which routes exist.
        self.authz
            .check(&parts, &host, peer, &auth)
            .map_err(|policy| ProxyError::Denied { policy })?;
        // HBONE: the CONNECT authority picks the service, whatever `Host` says. Plain: `Host`,
        // against the ingress table in feed mode. Static mode: `Host` alone (a hand-written
        // file's virtual hosts), then `<host>:<port>` (a saved feed's mesh virtual hosts; port
        // 80 when `Host` has none).
        let (table, route_key, static_port) = match (peer.authority, &self.ingress) {
            (Some(authority), _) => (&self.table, authority.to_string(), None),
            (None, Some(ingress)) => (ingress, host.clone(), None),
            (None, None) => {
                let port = action::explicit_port(&authority).unwrap_or(80);
                (&self.table, host.clone(), Some(port))
            }
        };
        let selected = table
            .select(&route_key, &parts)
            .or_else(|| {
                static_port.and_then(|port| table.select(&format!("{host}:{port}"), &parts))
            })
            .ok_or_else(|| ProxyError::NoRoute {
                host: host.clone(),
                path: parts.uri.path().to_owned(),
            })?;
        log.route = Some(format!(
            "{}/{}",
            selected.rule.route_name, selected.rule.name
        ));
        match &selected.rule.action {
            Action::Redirect(spec) => redirect(&parts, &host, spec, &selected),
            Action::Direct { status, body } => {
                let mut r = Response::new(body::full(body.clone()));
                *r.status_mut() = *status;
                Ok(r)
            }
            Action::Forward(targets) => {
                let on_upgrade = upgrade
                    .then(|| parts.extensions.remove::<OnUpgrade>())
                    .flatten();
                let target = targets.pick(self.rng.below(targets.total())).clone();
                log.destination = Some((target.destination.clone(), target.subset.clone()));
                let overrides = prepare_request(&mut parts, &selected, peer, upgrade, &log.trace)?;
                let body = self.maybe_mirror(&parts, body, &selected);
                let req = Request::from_parts(parts, body);
                let response = self.forward(req, &selected, target, overrides).await?;
                Ok(finish_response(response, &selected, on_upgrade))
            }
        }
    }

    /// Starts a mirror for this request when the rule asks and the dice agree.
    fn maybe_mirror(&self, parts: &Parts, body: Body, selected: &Selected) -> Body {
        let Some(m) = &selected.rule.mirror else {
            return body;
        };
        if !self.rng.chance(m.percentage.unwrap_or(100.0)) {
            return body;
        }
        match self.destinations.get(&m.destination) {
            Some(dest) => self.mirrors.start(
                parts,
                body,
                dest.clone(),
                m.subset.clone(),
                self.rng.clone(),
            ),
            None => body,
        }
    }

    async fn forward(
        &self,
        req: Request<Body>,
        selected: &Selected,
        target: crate::config::WeightedDestination,
        overrides: Overrides,
    ) -> Result<Response<Body>, ProxyError> {
        let rule = &selected.rule;
        let dest = self
            .destinations
            .get(&target.destination)
            .ok_or_else(|| ProxyError::NoHealthyUpstream {
                destination: target.destination.clone(),
                subset: target.subset.clone(),
            })?
            .clone();
        let retry = overrides.retry_policy(
            rule.retries
                .as_ref()
                .map_or_else(RetryPolicy::none, RetryPolicy::from_config),
        );
        let attempt = forward::Attempt::new(dest.clone(), target.subset.clone(), self.rng.clone());
        let stack = ServiceBuilder::new()
            .option_layer(
                rule.fault
                    .clone()
                    .map(|f| FaultLayer::new(f, self.rng.clone())),
            )
            .layer(TimeoutLayer::new(overrides.timeout(rule.timeout)))
            .layer(RetryLayer::new(
                retry,
                dest.retry_budget.clone(),
                self.rng.clone(),
            ))
            .layer(CircuitBreakerLayer::new(dest.breaker.clone()))
            .service(attempt);
        stack.oneshot(req).await
    }
}

/// Replaces the request path by its normalized form (the query is kept as sent). CONNECT and
/// `OPTIONS *` have no path to normalize.
fn normalize_path(parts: &mut Parts, mode: PathNormalization) -> Result<(), ProxyError> {
    if parts.method == http::Method::CONNECT || parts.uri.path() == "*" {
        return Ok(());
    }
    let Some(path_and_query) = parts.uri.path_and_query() else {
        return Ok(());
    };
    let Cow::Owned(path) = path::normalize(path_and_query.path(), mode)? else {
        return Ok(());
    };
    let normalized = match path_and_query.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(
        normalized
            .parse()
            .map_err(|_| ProxyError::BadPath(PathError::BadEscape))?,
    );
    parts.uri =
        http::Uri::from_parts(uri).map_err(|_| ProxyError::BadPath(PathError::BadEscape))?;
    Ok(())
}

/// Header hygiene, overrides, trace headers, rewrite and request header edits, in that order.
fn prepare_request(
    parts: &mut Parts,
    selected: &Selected,
    peer: &Peer,
    upgrade: bool,
    trace: &TraceContext,
) -> Result<Overrides, ProxyError> {
    // Envoy's overrides only from verified mesh peers; an external caller's are dropped unread.
    let overrides = if peer.identity.is_some() {
        Overrides::take(&mut parts.headers)
    } else {
        Overrides::strip_external(&mut parts.headers);
        Overrides::default()
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::append_forwarded_for(&mut parts.headers, peer.addr);
    if let Some(scheme) = peer.edge_scheme {
        headers::set_forwarded_proto(&mut parts.headers, scheme);
    }
    parts.extensions.insert(DownstreamAddr(peer.addr));
    headers::ensure_host(parts);
    trace.inject(&mut parts.headers);
    let rule = &selected.rule;
    if let Some(rewrite) = &rule.rewrite {
        let prefix = selected.outcome.matched_prefix.as_deref();
        action::apply_rewrite(&mut parts.uri, &mut parts.headers, rewrite, prefix)?;
    }
    rule.request_headers.apply(&mut parts.headers);
    Ok(overrides)
}

/// Response hygiene and header edits; relays an accepted upgrade.
fn finish_response(
    mut response: Response<Body>,
    selected: &Selected,
    on_upgrade: Option<OnUpgrade>,
) -> Response<Body> {
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    match on_upgrade {
        Some(downstream) if switching => upgrade::relay(downstream, &mut response),
        _ => headers::strip_hop_by_hop(response.headers_mut(), false),
    }
    selected.rule.response_headers.apply(response.headers_mut());
    response
}

fn redirect(
    parts: &Parts,
    host: &str,
    spec: &crate::config::RedirectConfig,
    selected: &Selected,
) -> Result<Response<Body>, ProxyError> {
    let prefix = selected.outcome.matched_prefix.as_deref();
    let (status, headers) = action::redirect(&parts.uri, host, spec, prefix)?;
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}
