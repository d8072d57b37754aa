//! How the waypoint reaches endpoints: plain TCP (static mode) or HBONE (feed mode).
//!
//! Over HBONE a request to endpoint `podIP:targetPort` opens (or reuses, through the pooled
//! [`mesh_core::hbone::Client`]) an mTLS HTTP/2 connection to `podIP:<hbone port>` presenting
//! the waypoint's own certificate, and a `CONNECT` stream with `:authority` = `podIP:targetPort`.
//! The peer must prove the endpoint workload's SPIFFE identity from the feed; an endpoint
//! without a known identity is never connected to.
//!
//! The `CONNECT` carries, as the node's does (HBONE.md), `forwarded: for="<client ip:port>"`
//! and `baggage` naming the waypoint itself (`k8s.namespace.name`, `k8s.deployment.name`,
//! `service.name`). The node attributes a tunnel to its `forwarded` client, so pooled HBONE
//! connections are kept per downstream client IP ([`crate::destination::Pools`]) and never
//! carry another client's requests; each request also carries its client in `x-forwarded-for`.

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{uri::Authority, HeaderMap, HeaderValue, Uri};
use mesh_core::{
    hbone::{self, baggage::WorkloadMeta, headers, ClientError, OutboundRequest, Tunnel},
    identity::SpiffeId,
    tls::IdentityCert,
};

use crate::{config::DestinationConfig, feed::WaypointName};

tokio::task_local! {
    /// The downstream client of the request being sent, read when a tunnel is opened for it.
    static DOWNSTREAM: SocketAddr;
}

/// The downstream client address, carried as a request extension to the upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamAddr(pub SocketAddr);

/// Runs `sending` (an upstream request) so that tunnels it opens name `client` in `forwarded`.
pub async fn with_downstream<F: Future>(client: Option<SocketAddr>, sending: F) -> F::Output {
    match client {
        Some(client) => DOWNSTREAM.scope(client, sending).await,
        None => sending.await,
    }
}

/// `baggage` describing the waypoint (its Deployment is named after the waypoint, as Istio's
/// is); none when a name has characters a header part may not carry.
pub fn baggage(me: &WaypointName) -> Option<HeaderValue> {
    let meta = WorkloadMeta {
        namespace: me.namespace.clone(),
        workload_name: me.name.clone(),
        workload_kind: "deployment".into(),
        canonical_service: me.name.clone(),
        canonical_revision: "latest".into(),
    };
    meta.to_baggage().ok()
}

/// Istio's HBONE port, where node tunnels accept inbound tunnels.
pub const HBONE_PORT: u16 = 15008;

/// Why an HBONE upstream connection could not be opened (a connect failure: 503, retriable).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The request URI has no `ip:port` authority.
    #[error("upstream uri {uri} has no ip:port authority")]
    BadUri { uri: String },
    /// The endpoint's identity is unknown, so its peer cannot be verified.
    #[error("endpoint {endpoint} has no known spiffe identity; refusing to connect unverified")]
    NoIdentity { endpoint: SocketAddr },
    /// The tunnel could not be opened.
    #[error("hbone tunnel to {endpoint}: {source}")]
    Tunnel {
        endpoint: SocketAddr,
        #[source]
        source: ClientError,
    },
    /// The tunnel did not open within the destination's connect timeout.
    #[error("hbone tunnel to {endpoint} not open after {after:?}")]
    Timeout {
        endpoint: SocketAddr,
        after: Duration,
    },
}

/// The upstream transport of every destination.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    /// Plain TCP to the endpoint address.
    #[default]
    Plain,
    /// HBONE to the endpoint's node.
    Hbone(HboneUpstream),
}

/// What HBONE upstream connections share.
#[derive(Debug, Clone)]
pub struct HboneUpstream {
    /// The pooled tunnel client.
    pub client: hbone::Client,
    /// The waypoint's certificate, presented as client certificate.
    pub cert: Arc<IdentityCert>,
    /// The port node tunnels accept HBONE on ([`HBONE_PORT`]; tests use ephemeral ports).
    pub port: u16,
    /// `baggage` sent on every `CONNECT` ([`baggage`]).
    pub baggage: Option<HeaderValue>,
}

/// A connector for one destination: endpoint address -> tunnel.
#[derive(Debug, Clone)]
pub struct HboneConnector {
    upstream: HboneUpstream,
    identities: Arc<HashMap<SocketAddr, SpiffeId>>,
    connect_timeout: Duration,
}

impl HboneConnector {
    /// A connector for `destination`'s endpoints; endpoints whose identity does not parse get
    /// none, and so are refused at connect time.
    pub fn new(upstream: HboneUpstream, destination: &DestinationConfig) -> Self {
        let identities = destination
            .endpoints
            .iter()
            .filter_map(|e| {
                let id = e.identity.as_deref()?.parse().ok()?;
                Some((e.address, id))
            })
            .collect();
        Self {
            upstream,
            identities: Arc::new(identities),
            connect_timeout: destination.traffic_policy.connection_pool.connect_timeout.0,
        }
    }

    /// Opens a tunnel to the endpoint in `dst` (`http://podIP:port/...`). The downstream client
    /// is read now, in the requesting task (the returned future may finish in another).
    pub fn connect(self, dst: Uri) -> impl Future<Output = Result<Tunnel, UpstreamError>> {
        let client = DOWNSTREAM.try_with(|c| *c).ok();
        self.connect_for(dst, client)
    }

    async fn connect_for(
        self,
        dst: Uri,
        client: Option<SocketAddr>,
    ) -> Result<Tunnel, UpstreamError> {
        let endpoint: SocketAddr = dst
            .authority()
            .and_then(|a| a.as_str().parse().ok())
            .ok_or_else(|| UpstreamError::BadUri {
                uri: dst.to_string(),
            })?;
        let identity = self
            .identities
            .get(&endpoint)
            .cloned()
            .ok_or(UpstreamError::NoIdentity { endpoint })?;
        let authority =
            Authority::try_from(endpoint.to_string()).map_err(|_| UpstreamError::BadUri {
                uri: dst.to_string(),
            })?;
        let request = OutboundRequest {
            source: self.upstream.cert.clone(),
            destination_identities: vec![identity],
            dial: SocketAddr::new(endpoint.ip(), self.upstream.port),
            authority,
            headers: self.connect_headers(client),
            origin: None,
        };
        let connecting = self.upstream.client.connect(request);
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(tunnel)) => Ok(tunnel),
            Ok(Err(source)) => Err(UpstreamError::Tunnel { endpoint, source }),
            Err(_) => Err(UpstreamError::Timeout {
                endpoint,
                after: self.connect_timeout,
            }),
        }
    }

    /// `forwarded` for the requesting client (when known) and the waypoint's `baggage`.
    fn connect_headers(&self, client: Option<SocketAddr>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(value) = client.and_then(|c| headers::forwarded(c, None).ok()) {
            map.insert(headers::FORWARDED, value);
        }
        if let Some(value) = &self.upstream.baggage {
            map.insert(headers::BAGGAGE, value.clone());
        }
        map
    }
}
