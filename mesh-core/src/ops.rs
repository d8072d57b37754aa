//! The operations HTTP endpoint every Weft binary serves: Prometheus metrics, readiness, and
//! component-specific pages (the node's `/config_dump`, for instance).
//!
//! Small and defensive: HTTP/1.1 only, GET only, a bounded number of concurrent connections, a
//! header-read timeout, and it stops accepting when the drain starts.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Semaphore};

use crate::drain::DrainWatch;

/// At most this many scrapes and probes are served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 32;
/// A client that has not sent its request head by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A live readiness condition, e.g. "the config has been loaded".
pub type ReadinessCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Whether the component is ready to take traffic: a flag the component sets (cleared when it
/// starts draining), and optionally a condition computed on every probe. Both must hold.
#[derive(Clone, Default)]
pub struct Readiness {
    flag: Arc<AtomicBool>,
    check: Option<ReadinessCheck>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("flag", &self.flag.load(Ordering::Acquire))
            .field("check", &self.check.is_some())
            .finish()
    }
}

impl Readiness {
    /// Ready only while `check` holds (and the flag, which starts set, is not cleared).
    pub fn with_check(check: ReadinessCheck) -> Self {
        let readiness = Self {
            flag: Arc::default(),
            check: Some(check),
        };
        readiness.set(true);
        readiness
    }

    /// Marks the component ready (or not).
    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::Release);
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.flag.load(Ordering::Acquire) && self.check.as_ref().is_none_or(|check| check())
    }
}

/// A page rendered on each request: returns the content type and the body.
pub type Page = Arc<dyn Fn() -> (&'static str, String) + Send + Sync>;

/// What the endpoint serves.
#[derive(Clone, Default)]
pub struct OpsRoutes {
    metrics: Option<Arc<Registry>>,
    readiness: Option<Readiness>,
    pages: BTreeMap<&'static str, Page>,
}

impl std::fmt::Debug for OpsRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsRoutes")
            .field("metrics", &self.metrics.is_some())
            .field("readiness", &self.readiness)
            .field("pages", &self.pages.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl OpsRoutes {
    /// Serves `registry` at `/metrics` and `/stats/prometheus` (Istio's path).
    pub fn metrics(mut self, registry: Arc<Registry>) -> Self {
        self.metrics = Some(registry);
        self
    }

    /// Serves `/healthz/ready`: 200 when ready, 503 otherwise.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Serves `page` at `path`.
    pub fn page(mut self, path: &'static str, page: Page) -> Self {
        self.pages.insert(path, page);
        self
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
        }
        match (path, &self.metrics, &self.readiness) {
            ("/metrics" | "/stats/prometheus", Some(registry), _) => render_metrics(registry),
            ("/healthz/ready", _, Some(readiness)) if readiness.is_ready() => {
                text(StatusCode::OK, "ready\n")
            }
            ("/healthz/ready", _, Some(_)) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => match self.pages.get(path) {
                Some(page) => {
                    let (content_type, body) = page();
                    with_type(StatusCode::OK, content_type, body)
                }
                None => text(StatusCode::NOT_FOUND, "no such page\n"),
            },
        }
    }
}

fn render_metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => with_type(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, body),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.to_string())
}

fn with_type(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Serves `routes` on `listener` until the drain starts; in-flight requests finish first.
pub async fn serve(listener: TcpListener, routes: OpsRoutes, mut drain: DrainWatch) {
    let routes = Arc::new(routes);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, ?local, "ops endpoint accept failed");
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let routes = routes.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, routes, drain).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    routes: Arc<OpsRoutes>,
    mut drain: DrainWatch,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = routes.respond(request.method(), request.uri().path());
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "ops connection ended with an error");
            }
        }
        _ = drain.signaled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::drain;

    async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    async fn start(
        routes: OpsRoutes,
    ) -> (SocketAddr, drain::DrainTrigger, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, watch) = drain::channel();
        let task = tokio::spawn(serve(listener, routes, watch));
        (addr, trigger, task)
    }

    #[tokio::test]
    async fn serves_metrics_readiness_and_pages() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register(
            "weft_test_events",
            "events seen by the test",
            counter.clone(),
        );
        counter.inc_by(3);
        let readiness = Readiness::default();
        let page: Page = Arc::new(|| ("application/json", "{\"ok\":true}".to_string()));
        let routes = OpsRoutes::default()
            .metrics(Arc::new(registry))
            .readiness(readiness.clone())
            .page("/config_dump", page);
        let (addr, trigger, task) = start(routes).await;

        for path in ["/metrics", "/stats/prometheus"] {
            let metrics = get(addr, "GET", path).await;
            assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
            assert!(metrics.contains("weft_test_events_total 3"), "{metrics}");
        }
        assert!(get(addr, "GET", "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 503"));
        readiness.set(true);
        assert!(get(addr, "GET", "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 200"));
        let dump = get(addr, "GET", "/config_dump").await;
        assert!(
            dump.contains("application/json") && dump.ends_with("{\"ok\":true}"),
            "{dump}"
        );
        assert!(get(addr, "GET", "/nope").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST", "/metrics")
            .await
            .starts_with("HTTP/1.1 405"));

        let outcome = trigger.drain(Duration::from_secs(5)).await;
        assert_eq!(outcome, drain::DrainOutcome::Complete);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn readiness_needs_both_the_flag_and_the_check() {
        let loaded = Arc::new(AtomicBool::new(false));
        let seen = loaded.clone();
        let readiness = Readiness::with_check(Arc::new(move || seen.load(Ordering::Acquire)));
        assert!(!readiness.is_ready(), "check not yet true");
        loaded.store(true, Ordering::Release);
        assert!(readiness.is_ready());
        readiness.set(false);
        assert!(
            !readiness.is_ready(),
            "draining clears readiness whatever the check says"
        );
    }

    #[tokio::test]
    async fn unconfigured_routes_are_not_found() {
        let (addr, trigger, _task) = start(OpsRoutes::default()).await;
        assert!(get(addr, "GET", "/metrics")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get(addr, "GET", "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 404"));
        trigger.drain(Duration::from_secs(5)).await;
    }
}
