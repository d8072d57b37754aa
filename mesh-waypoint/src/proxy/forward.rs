//! One upstream attempt: choose a healthy endpoint, send over the destination's pooled client,
//! classify the outcome for outlier detection. Retries and timeouts wrap this service.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{uri::PathAndQuery, Request, Response, Uri, Version};
use tower::Service;

use super::ProxyError;
use crate::{
    body::{self, Body},
    destination::{Destination, InFlight},
    resilience::circuit,
    rng::SharedRng,
    upstream::{self, DownstreamAddr},
};

/// The endpoint that answered, carried as a response extension for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamAddr(pub std::net::SocketAddr);

/// Sends one attempt to an endpoint of `destination`/`subset`.
#[derive(Debug, Clone)]
pub struct Attempt {
    destination: Arc<Destination>,
    subset: Option<String>,
    rng: SharedRng,
}

impl Attempt {
    /// An attempt service for one target.
    pub fn new(destination: Arc<Destination>, subset: Option<String>, rng: SharedRng) -> Self {
        Self {
            destination,
            subset,
            rng,
        }
    }
}

impl Service<Request<Body>> for Attempt {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}

impl Attempt {
    async fn send(self, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let dest = &self.destination;
        let endpoint = dest
            .choose(self.subset.as_deref(), req.headers(), self.rng.as_ref())
            .ok_or_else(|| ProxyError::NoHealthyUpstream {
                destination: dest.name.clone(),
                subset: self.subset.clone(),
            })?;
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        let http2 = dest.use_http2(req.version() == Version::HTTP_2, upgrade);
        *req.uri_mut() = endpoint_uri(req.uri(), endpoint.address)?;
        *req.version_mut() = if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let in_flight = InFlight::new(endpoint.clone());
        let client = req.extensions().get::<DownstreamAddr>().map(|d| d.0);
        let pool = dest.client(http2, client.map(|c| c.ip()));
        match upstream::with_downstream(client, pool.request(req)).await {
            Ok(response) => {
                dest.record(&endpoint, !response.status().is_server_error());
                let mut response = response.map(|b| body::with_guard(body::boxed(b), in_flight));
                response
                    .extensions_mut()
                    .insert(UpstreamAddr(endpoint.address));
                Ok(response)
            }
            Err(err) => {
                if let Some(limit) = circuit::is_connection_limit(&err) {
                    return Err(ProxyError::Overflow(limit));
                }
                dest.record(&endpoint, false);
                let source = Box::new(err);
                Err(if source.is_connect() {
                    ProxyError::ConnectFailure {
                        endpoint: endpoint.address,
                        source,
                    }
                } else {
                    ProxyError::UpstreamReset {
                        endpoint: endpoint.address,
                        source,
                    }
                })
            }
        }
    }
}

/// `http://<endpoint><path?query>`: the pool is keyed by endpoint, the logical host stays in
/// the `Host` header (HTTP/1.1).
fn endpoint_uri(uri: &Uri, endpoint: std::net::SocketAddr) -> Result<Uri, ProxyError> {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme("http")
        .authority(endpoint.to_string())
        .path_and_query(pq)
        .build()
        .map_err(|_| {
            ProxyError::Route(crate::route::RouteError::BadRewrite {
                value: uri.to_string(),
            })
        })
}
