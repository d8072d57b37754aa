//! The HBONE front end (feed mode): nodes send traffic for services bound to this waypoint as
//! mTLS HTTP/2 `CONNECT` streams to port 15008, presenting the *source workload's* certificate,
//! with `:authority` = the service VIP and port.
//!
//! The TLS server presents the waypoint's certificate and requires a client certificate from
//! the waypoint's trust domain ([`mesh_core::tls::server_config`]). Each accepted stream is
//! served by the waypoint's HTTP server ([`crate::serve`]); the verified peer identity becomes
//! the request's source principal and the CONNECT authority selects the service and port.
//! A CONNECT to an authority that is neither a bound service `vip:port` nor a bound pod
//! `ip:port` is refused with 400 before the tunnel is up (HBONE.md); whether the principal may
//! reach a bound one is decided per request (403).

use std::sync::Arc;

use mesh_core::{
    drain::DrainWatch,
    hbone::{
        self, baggage::WorkloadMeta, headers::forwarded_for, Accepted, ConnectRequest, Rejection,
    },
    tls::{self, IdentityCert, TlsError},
};
use tokio::net::TcpListener;

use crate::{
    proxy::Peer,
    serve::{http_builder, serve_http, SharedProxy},
};

/// Builds the HBONE server for `cert` that hands streams to `proxy`.
pub fn server(
    cert: Arc<IdentityCert>,
    proxy: SharedProxy,
    drain: DrainWatch,
) -> Result<hbone::Server, TlsError> {
    let config = tls::server_config(cert)?;
    let handler = move |request: ConnectRequest| {
        let proxy = proxy.clone();
        let drain = drain.clone();
        async move { accept(request, proxy, drain) }
    };
    Ok(hbone::Server::new(Arc::new(config), Arc::new(handler)))
}

/// Runs `server` on `listener` until the drain starts.
pub async fn run(server: hbone::Server, listener: TcpListener, drain: DrainWatch) {
    server.serve(listener, drain).await;
    tracing::info!("hbone listener closed for drain");
}

/// Accepts a CONNECT to a bound service or pod; refuses any other authority with 400. A
/// config swapped in later can still remove it: requests then get 404 from the proxy.
fn accept(
    request: ConnectRequest,
    proxy: SharedProxy,
    drain: DrainWatch,
) -> Result<Accepted, Rejection> {
    let peer = peer(&request);
    if !proxy.load().serves(request.authority) {
        tracing::debug!(authority = %request.authority, principal = ?peer.identity, "hbone stream refused: not bound here");
        return Err(Rejection::BadRequest(format!(
            "{} is no service or pod bound to this waypoint",
            request.authority
        )));
    }
    tracing::debug!(authority = %request.authority, principal = ?peer.identity, "hbone stream accepted");
    Ok(Accepted::new(move |tunnel| {
        serve_http(http_builder(), tunnel, peer, proxy, drain)
    }))
}

/// The request's peer: the address of the tunnel's socket, the verified SPIFFE identity, the
/// CONNECT authority, and the `baggage` names only when they are in the identity's namespace
/// (telemetry labels; metrics bound how many distinct ones they keep). A node tunnel dials the waypoint from inside the client pod (as
/// ztunnel does), so the socket address is the client's; a `forwarded` header is not believed
/// (any mesh identity could name any address in it and pass `ipBlocks` or `remoteIpBlocks`).
fn peer(request: &ConnectRequest) -> Peer {
    if let Some(claimed) = forwarded_for(&request.headers) {
        if claimed.ip() != request.peer_addr.ip() {
            tracing::debug!(%claimed, peer = %request.peer_addr, "forwarded address ignored: the socket's address is the client's");
        }
    }
    Peer {
        addr: request.peer_addr,
        identity: Some(request.peer_identity.to_string()),
        authority: Some(request.authority),
        workload: WorkloadMeta::from_headers(&request.headers)
            .filter(|meta| meta.namespace == request.peer_identity.namespace()),
        edge_scheme: None,
        trusted_proxy_hops: 0,
        sni: None,
    }
}
