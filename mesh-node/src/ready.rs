//! Readiness (15021 `/healthz/ready`): 200 only when the node can serve its pods, otherwise 503
//! with every reason on the page, so an operator sees why a node stays out of rotation.
//!
//! Not ready while: the node is draining; it follows mesh-control and no feed version has been
//! applied yet; or a local workload has no certificate yet (the page names the identities; the
//! CA may be refusing them). Conditions are computed on every probe.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::drain::DrainWatch;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::{accept_loop, Proxy};

/// A probe that has not sent its request head by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the node is with the control feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedProgress {
    /// Static mode: the mesh comes from a saved feed, or is empty.
    NotFollowing,
    /// Following mesh-control; nothing received yet.
    Waiting,
    /// A complete version is in force.
    Applied {
        /// The feed version.
        version: u64,
    },
}

/// The node's readiness conditions. Cheap to clone.
#[derive(Clone)]
pub struct ReadyState {
    proxy: Proxy,
    draining: Arc<AtomicBool>,
    feed: Arc<Mutex<FeedProgress>>,
}

impl std::fmt::Debug for ReadyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyState")
            .field("reasons", &self.not_ready_reasons())
            .finish()
    }
}

impl ReadyState {
    /// Conditions over `proxy`'s state and certificates; `follows_feed` makes readiness wait
    /// for the first applied feed version.
    pub fn new(proxy: Proxy, follows_feed: bool) -> Self {
        let feed = if follows_feed {
            FeedProgress::Waiting
        } else {
            FeedProgress::NotFollowing
        };
        Self {
            proxy,
            draining: Arc::default(),
            feed: Arc::new(Mutex::new(feed)),
        }
    }

    /// Marks the node draining: never ready again.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Records that feed `version` is in force.
    pub fn feed_applied(&self, version: u64) {
        let mut feed = self.feed.lock().unwrap_or_else(|p| p.into_inner());
        *feed = FeedProgress::Applied { version };
    }

    /// Why the node is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            reasons.push("draining: the node is shutting down".to_owned());
        }
        match &*self.feed.lock().unwrap_or_else(|p| p.into_inner()) {
            FeedProgress::Waiting => {
                reasons.push("waiting for the first complete version of the control feed".into())
            }
            FeedProgress::NotFollowing | FeedProgress::Applied { .. } => {}
        }
        let held = self.proxy.certs.identities();
        let missing: Vec<String> = self
            .proxy
            .state()
            .local_identities()
            .into_iter()
            .filter(|identity| !held.contains(identity))
            .map(|identity| identity.to_string())
            .collect();
        if !missing.is_empty() {
            reasons.push(format!("no certificate yet for {}", missing.join(", ")));
        }
        reasons
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let (status, body) = match (method, path) {
            (&Method::GET, "/healthz/ready") => match self.not_ready_reasons() {
                reasons if reasons.is_empty() => (StatusCode::OK, "ready\n".to_owned()),
                reasons => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready:\n- {}\n", reasons.join("\n- ")),
                ),
            },
            (&Method::GET, _) => (StatusCode::NOT_FOUND, "no such page\n".to_owned()),
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is served here\n".to_owned(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// Serves `/healthz/ready` on `listener` until `drain`; one request per connection.
pub async fn serve(listener: TcpListener, ready: ReadyState, drain: DrainWatch) {
    accept_loop(listener, drain, "readiness", move |stream, peer| {
        serve_probe(stream, peer, ready.clone())
    })
    .await;
}

async fn serve_probe(stream: TcpStream, peer: SocketAddr, ready: ReadyState) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = ready.respond(request.method(), request.uri().path());
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        tracing::debug!(%error, %peer, "readiness probe connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        certs::CertManager,
        feed::{convert::state_of, MeshSnapshot},
        metrics::Metrics,
        policy::{Authorizer, Policies},
        socket::{FactoryDialer, SystemSockets},
    };
    use mesh_core::proto::build;

    /// A proxy whose state has one local workload and whose certificate store is empty.
    fn proxy_without_certificates() -> Proxy {
        let pod = build::workload("apps", "a-0", "a", "10.9.0.1".parse().unwrap(), "n1");
        let state = state_of("n1", &MeshSnapshot::of([pod], []));
        let sockets: Arc<dyn crate::socket::SocketFactory> = Arc::new(SystemSockets);
        Proxy {
            state: Arc::new(arc_swap::ArcSwap::from_pointee(state)),
            certs: Arc::new(CertManager::default()),
            client: mesh_core::hbone::Client::new(Arc::new(FactoryDialer(sockets.clone()))),
            sockets,
            authz: Authorizer::new(Policies::default()),
            metrics: Metrics::new(),
            pods: Default::default(),
            joiner: Default::default(),
            direct: Default::default(),
        }
    }

    #[tokio::test]
    async fn local_workload_without_certificate_is_a_reason() {
        let ready = ReadyState::new(proxy_without_certificates(), false);
        assert_eq!(
            ready.not_ready_reasons(),
            vec!["no certificate yet for spiffe://cluster.local/ns/apps/sa/a".to_owned()]
        );
        let response = ready.respond(&Method::GET, "/healthz/ready");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn following_the_feed_waits_for_the_first_applied_version() {
        let ready = ReadyState::new(proxy_without_certificates(), true);
        let reasons = ready.not_ready_reasons();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("waiting for the first complete version")),
            "{reasons:?}"
        );
        ready.feed_applied(5);
        assert!(
            !ready.not_ready_reasons().iter().any(|r| r.contains("feed")),
            "{:?}",
            ready.not_ready_reasons()
        );
    }
}
