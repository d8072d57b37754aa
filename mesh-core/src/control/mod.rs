//! The gRPC channel from a node tunnel or waypoint to mesh-control (feeds and CA).
//!
//! An `https://` address is TLS 1.3: mesh-control's certificate must chain to the mesh trust
//! bundle and carry mesh-control's SPIFFE identity (by default
//! `spiffe://<trust domain>/ns/weft-system/sa/mesh-control`). Callers have no certificate yet (they
//! ask mesh-control for it), so they prove themselves in-band with a bearer token, which TLS
//! keeps off the wire. The trust bundle file is re-read for every connection, so a rotated bundle
//! applies on the next reconnect. `http://` is plaintext, for labs only, and says so in the log.

mod client_tls;
mod server_tls;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::identity::{
    grpc::{BearerToken, TokenError},
    IdentityError, SpiffeId,
};
use client_tls::ControlConnector;
pub use server_tls::{tls_incoming, TlsIncomingSettings, TlsServerStream};

/// Namespace of mesh-control's service account in the shipped manifests.
pub const DEFAULT_NAMESPACE: &str = "weft-system";
/// mesh-control's service account in the shipped manifests.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "mesh-control";

/// HTTP/2 PING interval on an idle feed stream: nothing flows while the config is unchanged, so
/// PINGs are what notices a dead control plane.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a PING may go unanswered before the stream counts as broken.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// mesh-control's identity in `trust_domain` with the shipped service account.
pub fn default_identity(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
    SpiffeId::new(trust_domain, DEFAULT_NAMESPACE, DEFAULT_SERVICE_ACCOUNT)
}

/// How a client trusts mesh-control over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlTls {
    /// PEM roots mesh-control's certificate must chain to; re-read for every connection.
    pub trust_bundle_file: PathBuf,
    /// The identity mesh-control's certificate must carry.
    pub identity: SpiffeId,
}

/// Errors reaching mesh-control; each names the address and what to check.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not a URI tonic accepts.
    #[error("invalid control address {address:?}: {source}")]
    Endpoint {
        /// The address as given.
        address: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// Neither `http://` nor `https://`.
    #[error("control address {0:?} must start with https:// (or http:// for a plaintext lab)")]
    Scheme(String),
    /// `https://` without a trust bundle to verify mesh-control with.
    #[error("control address {0:?} is https but no trust bundle is configured to verify mesh-control with")]
    NoTrustBundle(String),
    /// Nothing answered in time, the connection failed, or mesh-control's certificate was refused.
    #[error("cannot connect to mesh-control at {address} (is it running and reachable, and does its certificate chain to the trust bundle?): {reason}")]
    Connect {
        /// The address as given.
        address: String,
        /// The whole cause chain (tonic's own message is only "transport error").
        reason: String,
    },
}

/// Where mesh-control is and how to trust it.
#[derive(Debug, Clone)]
pub struct ControlEndpoint {
    address: String,
    endpoint: Endpoint,
    tls: Option<Arc<ControlTls>>,
}

impl ControlEndpoint {
    /// `https://` addresses use `tls` (required); `http://` addresses are plaintext and ignore it.
    pub fn new(address: &str, tls: Option<ControlTls>) -> Result<Self, ConnectError> {
        let scheme = address.split_once("://").map(|(scheme, _)| scheme);
        let tls = match (scheme, tls) {
            (Some("https"), Some(tls)) => Some(Arc::new(tls)),
            (Some("https"), None) => return Err(ConnectError::NoTrustBundle(address.to_owned())),
            (Some("http"), _) => {
                tracing::warn!(%address, "the control connection is plaintext: bearer tokens and config cross the network unencrypted (use https:// outside a lab)");
                None
            }
            _ => return Err(ConnectError::Scheme(address.to_owned())),
        };
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|source| ConnectError::Endpoint {
                address: address.to_owned(),
                source,
            })?
            .tcp_nodelay(true)
            .keep_alive_while_idle(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        Ok(Self {
            address: address.to_owned(),
            endpoint,
            tls,
        })
    }

    /// The address as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How mesh-control is verified; `None` for plaintext.
    pub fn tls(&self) -> Option<&ControlTls> {
        self.tls.as_deref()
    }

    /// Connects within `timeout`, with HTTP/2 keepalive PINGs so a quiet stream to a dead
    /// control plane is noticed.
    pub async fn connect(&self, timeout: Duration) -> Result<Channel, ConnectError> {
        let endpoint = self.endpoint.clone().connect_timeout(timeout);
        let connected = match &self.tls {
            Some(tls) => {
                let connector = ControlConnector(Arc::clone(tls));
                endpoint.connect_with_connector(connector).await
            }
            None => endpoint.connect().await,
        };
        connected.map_err(|error| ConnectError::Connect {
            address: self.address.clone(),
            reason: error_chain(&error),
        })
    }

    /// A channel that connects on first use and reconnects as needed (unary calls such as
    /// certificate requests).
    pub fn connect_lazy(&self, timeout: Duration) -> Channel {
        let endpoint = self.endpoint.clone().connect_timeout(timeout);
        match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(ControlConnector(Arc::clone(tls))),
            None => endpoint.connect_lazy(),
        }
    }
}

/// `error` and its sources, outermost first, joined by ": ".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Everything a long-lived client needs to reach mesh-control: where, how to authenticate, and
/// how to retry.
#[derive(Debug, Clone)]
pub struct ControlConnection {
    /// mesh-control's address and how to trust it.
    pub endpoint: ControlEndpoint,
    /// Bearer token proving the caller; a token file is re-read for every request, since
    /// projected service-account tokens rotate.
    pub token: Option<BearerToken>,
    /// Bound on establishing the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest delay between retries.
    pub max_backoff: Duration,
}

/// Errors opening a call to mesh-control.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The channel could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The bearer token could not be attached.
    #[error("bearer token: {0}")]
    Token(#[from] TokenError),
}

impl ControlConnection {
    /// Defaults: 5 s connect timeout, backoff from 250 ms to 30 s, no token.
    pub fn new(endpoint: ControlEndpoint) -> Self {
        Self {
            endpoint,
            token: None,
            connect_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// A fresh reconnect backoff.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_backoff, self.max_backoff)
    }

    /// Connects and wraps `message` in a request carrying the current bearer token.
    pub async fn open<T>(&self, message: T) -> Result<(Channel, tonic::Request<T>), OpenError> {
        let channel = self.endpoint.connect(self.connect_timeout).await?;
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            token.attach(&mut request).await?;
        }
        Ok((channel, request))
    }
}

#[cfg(test)]
mod tests;
