//! Local rate limiting as a tower layer: a token bucket shared by every request through the
//! waypoint (Envoy `local_ratelimit`). An empty bucket answers 429 with flag `RL`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{config::RateLimitConfig, proxy::ProxyError};

/// A token bucket refilled in steps of `tokens_per_fill` every `fill_interval`.
#[derive(Debug)]
pub struct TokenBucket {
    max: u32,
    per_fill: u32,
    interval: Duration,
    state: Mutex<(u32, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            max: config.max_tokens,
            per_fill: config.tokens_per_fill,
            // A zero interval would divide by zero; treat it as one millisecond.
            interval: config.fill_interval.0.max(Duration::from_millis(1)),
            state: Mutex::new((config.max_tokens, Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub fn try_acquire(&self) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock();
        let (tokens, last) = &mut *state;
        let fills = now.saturating_duration_since(*last).as_nanos() / self.interval.as_nanos();
        if fills > 0 {
            let added = u32::try_from(fills)
                .unwrap_or(u32::MAX)
                .saturating_mul(self.per_fill);
            *tokens = tokens.saturating_add(added).min(self.max);
            // Advance by whole intervals so partial progress toward the next fill is kept.
            *last += self.interval * u32::try_from(fills).unwrap_or(u32::MAX);
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

/// Tower layer that rejects requests when the bucket is empty.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    bucket: Arc<TokenBucket>,
}

impl RateLimitLayer {
    /// Wraps services with `bucket`.
    pub fn new(bucket: Arc<TokenBucket>) -> Self {
        Self { bucket }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<TokenBucket>,
}

impl<S, R> Service<R> for RateLimit<S>
where
    S: Service<R, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if !self.bucket.try_acquire() {
            return Box::pin(async { Err(ProxyError::RateLimited) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use tower::ServiceExt;

    fn bucket(max: u32, per_fill: u32, ms: u64) -> TokenBucket {
        TokenBucket::new(&RateLimitConfig {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: HumanDuration(Duration::from_millis(ms)),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_drains_and_refills() {
        let b = bucket(2, 1, 100);
        assert!(b.try_acquire());
        assert!(b.try_acquire());
        assert!(!b.try_acquire());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!b.try_acquire());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.try_acquire());
        assert!(!b.try_acquire());
        // A long idle period refills only up to the bucket size.
        tokio::time::advance(Duration::from_secs(60)).await;
        let granted = (0..5).filter(|_| b.try_acquire()).count();
        assert_eq!(granted, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_rejects_with_rate_limited() {
        let svc = RateLimitLayer::new(Arc::new(bucket(1, 1, 1000)))
            .layer(tower::service_fn(|()| async { Ok::<_, ProxyError>(1u8) }));
        assert_eq!(svc.clone().oneshot(()).await.ok(), Some(1));
        assert!(matches!(
            svc.oneshot(()).await,
            Err(ProxyError::RateLimited)
        ));
    }
}
