//! Retries as a tower layer (Istio `HTTPRetry`, Envoy `retry_on`): up to `attempts` retries,
//! each attempt under its own per-try timeout, with jittered exponential back-off, only for
//! the configured conditions, and only while the destination's retry budget allows.
//!
//! A request can be retried when its body is empty, or declares a size of at most
//! [`MAX_REPLAY_BODY`] bytes: such a body is read first (bounded) so it can be replayed.
//! Larger or unsized (chunked) bodies stream straight through and get a single attempt.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service, ServiceExt};

use crate::{
    body::{self, Body},
    config::RetryConfig,
    proxy::ProxyError,
    rng::SharedRng,
};

/// Largest request body held in memory so it can be replayed on retry.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// The retry conditions, by Envoy name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx, connect failure, reset or per-try timeout.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504 (and per-try timeouts).
    pub gateway_error: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `reset`: the upstream reset before responding.
    pub reset: bool,
}

impl RetryOn {
    /// Parses a comma-separated list; unknown names are ignored as Istio passes them through.
    pub fn parse(list: &str) -> Self {
        let mut on = Self::default();
        for token in list.split(',').map(str::trim) {
            match token {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "reset" => on.reset = true,
                _ => {}
            }
        }
        on
    }

    /// Whether an attempt's outcome should be retried.
    pub fn should_retry(&self, outcome: &Result<Response<Body>, ProxyError>) -> bool {
        match outcome {
            Ok(r) => self.status(r.status()),
            Err(ProxyError::ConnectFailure { .. }) => {
                self.connect_failure || self.five_xx || self.gateway_error
            }
            Err(ProxyError::UpstreamReset { .. }) => self.reset || self.five_xx,
            Err(ProxyError::Timeout { .. }) => self.five_xx || self.gateway_error,
            Err(_) => false,
        }
    }

    fn status(&self, s: StatusCode) -> bool {
        let gateway = matches!(s.as_u16(), 502..=504);
        (self.five_xx && s.is_server_error())
            || (self.gateway_error && gateway)
            || (self.retriable_4xx && s == StatusCode::CONFLICT)
    }
}

/// Caps concurrent retries per destination (Envoy retry budget): at most `percent` of the
/// active requests, and never fewer than `min_concurrency`.
#[derive(Debug)]
pub struct RetryBudget {
    active: AtomicUsize,
    retrying: AtomicUsize,
    percent: usize,
    min_concurrency: usize,
}

impl RetryBudget {
    /// Envoy's defaults are 20 % and 3.
    pub fn new(percent: usize, min_concurrency: usize) -> Self {
        Self {
            active: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            percent,
            min_concurrency,
        }
    }

    fn try_retry(self: &Arc<Self>) -> Option<BudgetGuard> {
        let active = self.active.load(Ordering::Relaxed);
        let cap = (active * self.percent / 100).max(self.min_concurrency);
        if self.retrying.fetch_add(1, Ordering::AcqRel) >= cap {
            self.retrying.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(BudgetGuard(self.clone(), true))
    }

    fn enter(self: &Arc<Self>) -> BudgetGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        BudgetGuard(self.clone(), false)
    }
}

struct BudgetGuard(Arc<RetryBudget>, bool);

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        let counter = if self.1 {
            &self.0.retrying
        } else {
            &self.0.active
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A resolved retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub on: RetryOn,
    /// Base back-off.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// Never retries.
    pub fn none() -> Self {
        Self {
            retries: 0,
            per_try_timeout: None,
            on: RetryOn::default(),
            backoff: Duration::from_millis(25),
        }
    }

    /// From configuration, with Istio's default conditions.
    pub fn from_config(c: &RetryConfig) -> Self {
        Self {
            retries: c.attempts,
            per_try_timeout: c.per_try_timeout.map(|d| d.0),
            on: RetryOn::parse(
                c.retry_on
                    .as_deref()
                    .unwrap_or("connect-failure,gateway-error,reset"),
            ),
            backoff: c.backoff.map_or(Duration::from_millis(25), |d| d.0),
        }
    }
}

/// Tower layer that retries a service.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
    budget: Arc<RetryBudget>,
    rng: SharedRng,
}

impl RetryLayer {
    /// A layer with a policy, the destination's budget and a random source for jitter.
    pub fn new(policy: RetryPolicy, budget: Arc<RetryBudget>, rng: SharedRng) -> Self {
        Self {
            policy,
            budget,
            rng,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

type Outcome = Result<Response<Body>, ProxyError>;

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Outcome> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(run(inner, layer, req))
    }
}

async fn run<S>(inner: S, layer: RetryLayer, req: Request<Body>) -> Outcome
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _active = layer.budget.enter();
    let RetryLayer {
        policy,
        budget,
        rng,
    } = layer;
    let (req, template) = replayable(req, policy.retries).await?;
    let mut outcome = attempt(inner.clone(), req, policy.per_try_timeout).await;
    for n in 0..policy.retries {
        let Some(template) = template.as_ref() else {
            break;
        };
        if !policy.on.should_retry(&outcome) {
            break;
        }
        let Some(_retrying) = budget.try_retry() else {
            tracing::debug!("retry budget exhausted");
            break;
        };
        tokio::time::sleep(backoff(policy.backoff, n, rng.as_ref())).await;
        outcome = attempt(inner.clone(), template.request(), policy.per_try_timeout).await;
    }
    outcome
}

async fn attempt<S>(inner: S, req: Request<Body>, per_try: Option<Duration>) -> Outcome
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    let call = inner.oneshot(req);
    match per_try {
        None => call.await,
        Some(after) => tokio::time::timeout(after, call)
            .await
            .map_err(|_| ProxyError::Timeout { after })?,
    }
}

/// Makes the request replayable when retries are possible and its body is small: returns the
/// request to send first and the template for retries (`None`: no retry possible).
async fn replayable(
    req: Request<Body>,
    retries: u32,
) -> Result<(Request<Body>, Option<Head>), ProxyError> {
    if req.body().is_end_stream() {
        let head = Head::of(&req, Bytes::new());
        return Ok((req, Some(head)));
    }
    let limit = MAX_REPLAY_BODY as u64;
    let small = req
        .body()
        .size_hint()
        .upper()
        .is_some_and(|upper| upper <= limit);
    if retries == 0 || !small {
        return Ok((req, None));
    }
    let (parts, body) = req.into_parts();
    // `Limited` enforces the bound even if the declared size lies.
    let bytes = Limited::new(body, MAX_REPLAY_BODY)
        .collect()
        .await
        .map_err(|source| ProxyError::RequestBody { source })?
        .to_bytes();
    let req = Request::from_parts(parts, body::full(bytes.clone()));
    let head = Head::of(&req, bytes);
    Ok((req, Some(head)))
}

/// The request head and (small) body, kept to rebuild the request for retries.
#[derive(Debug)]
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Head {
    fn of(req: &Request<Body>, body: Bytes) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        }
    }

    /// A fresh copy of the request.
    fn request(&self) -> Request<Body> {
        let mut copy = Request::new(body::full(self.body.clone()));
        *copy.method_mut() = self.method.clone();
        *copy.uri_mut() = self.uri.clone();
        *copy.version_mut() = self.version;
        *copy.headers_mut() = self.headers.clone();
        copy
    }
}

/// Full-jitter exponential back-off: uniform in `[0, base * 2^n)`, capped at ten times base
/// as Envoy does.
fn backoff(base: Duration, n: u32, rng: &dyn crate::rng::RandomSource) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << n.min(16))
        .min(base.saturating_mul(10));
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rng.below(millis))
}

#[cfg(test)]
mod tests;
