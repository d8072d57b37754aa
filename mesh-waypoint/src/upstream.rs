//! How the waypoint reaches endpoints: plain TCP (static mode) or HBONE (feed mode).
//!
//! Over HBONE a request to endpoint `podIP:targetPort` opens (or reuses, through the pooled
//! [`mesh_core::hbone::Client`]) an mTLS HTTP/2 connection to `podIP:<hbone port>` presenting
//! the waypoint's own certificate, and a `CONNECT` stream with `:authority` = `podIP:targetPort`.
//! The peer must prove the endpoint workload's SPIFFE identity from the feed; an endpoint
//! without a known identity is never connected to.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use http::{uri::Authority, HeaderMap, Uri};
use mesh_core::{
    hbone::{self, ClientError, OutboundRequest, Tunnel},
    identity::SpiffeId,
    tls::IdentityCert,
};

use crate::config::DestinationConfig;

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

    /// Opens a tunnel to the endpoint in `dst` (`http://podIP:port/...`).
    pub async fn connect(self, dst: Uri) -> Result<Tunnel, UpstreamError> {
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
            headers: HeaderMap::new(),
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
}
