//! The client side of the TLS connection to mesh-control: TCP, then a handshake that verifies
//! mesh-control against the trust bundle as the file holds it now.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_rustls::{client::TlsStream, TlsConnector};

use super::ControlTls;
use crate::identity::{cert::parse_certs, SpiffeId};
use crate::tls;

/// Largest trust bundle file read.
const MAX_BUNDLE_FILE: u64 = 1024 * 1024;

/// Why a TLS connection to mesh-control failed (reported through tonic's transport error).
#[derive(Debug, thiserror::Error)]
pub(super) enum TlsConnectError {
    #[error("control address {0} has no usable host")]
    NoHost(Uri),
    #[error("cannot read trust bundle {path}: {source}")]
    ReadBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trust bundle {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
    #[error("tcp connect to {address}: {source}")]
    Tcp {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls handshake with {address} (expected identity {identity}): {source}")]
    Handshake {
        address: String,
        identity: SpiffeId,
        #[source]
        source: std::io::Error,
    },
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, TlsConnectError>> + Send>>;

/// The connector a TLS channel to mesh-control dials with.
#[derive(Debug, Clone)]
pub(super) struct ControlConnector(pub(super) Arc<ControlTls>);

impl tower::Service<Uri> for ControlConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = TlsConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> ConnectFuture {
        connect_tls(uri, Arc::clone(&self.0))
    }
}

/// TCP, then a TLS handshake verifying mesh-control against the trust bundle read now. The
/// channel's connect timeout bounds the whole of it.
fn connect_tls(uri: Uri, tls: Arc<ControlTls>) -> ConnectFuture {
    Box::pin(async move {
        let host = uri
            .host()
            .ok_or_else(|| TlsConnectError::NoHost(uri.clone()))?;
        // An IPv6 literal keeps its brackets in the URI.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let address = format!("{uri}");
        let config = client_config(&tls).await?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| TlsConnectError::Tcp {
                address: address.clone(),
                source,
            })?;
        // Latency of small gRPC frames matters more than packet count.
        let _ = tcp.set_nodelay(true);
        // The verifier checks the SPIFFE identity, not a host name; SNI is off.
        let name = ServerName::try_from(host).map_err(|_| TlsConnectError::NoHost(uri.clone()))?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| TlsConnectError::Handshake {
                address,
                identity: tls.identity.clone(),
                source,
            })?;
        Ok(TokioIo::new(stream))
    })
}

async fn client_config(tls: &ControlTls) -> Result<Arc<rustls::ClientConfig>, TlsConnectError> {
    let path = &tls.trust_bundle_file;
    let pem = read_bundle(path).await?;
    let bundle_error = |reason: String| TlsConnectError::Bundle {
        path: path.clone(),
        reason,
    };
    let roots = parse_certs(&pem, "trust bundle").map_err(|e| bundle_error(e.to_string()))?;
    tls::server_auth_client_config(&roots, tls.identity.clone())
        .map_err(|e| bundle_error(e.to_string()))
}

async fn read_bundle(path: &Path) -> Result<String, TlsConnectError> {
    let read_error = |source| TlsConnectError::ReadBundle {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let mut pem = String::new();
    file.take(MAX_BUNDLE_FILE)
        .read_to_string(&mut pem)
        .await
        .map_err(read_error)?;
    Ok(pem)
}
