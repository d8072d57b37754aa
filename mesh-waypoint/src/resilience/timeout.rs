//! Request timeout as a tower layer: the upstream must produce response headers within the
//! deadline (retries included when this wraps the retry layer), else 504 with flag `UT`.
//! Streaming response bodies are not cut, so gRPC streams and downloads outlive it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tower::{Layer, Service};

use crate::proxy::ProxyError;

/// Applies an optional deadline; `None` means no timeout.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Option<Duration>,
}

impl TimeoutLayer {
    /// A layer with the given deadline.
    pub fn new(timeout: Option<Duration>) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R, Error = ProxyError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let call = self.inner.call(req);
        match self.timeout {
            None => Box::pin(call),
            Some(after) => Box::pin(async move {
                tokio::time::timeout(after, call)
                    .await
                    .map_err(|_| ProxyError::Timeout { after })?
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn slow(
        delay: Duration,
    ) -> impl Service<(), Response = u8, Error = ProxyError, Future: Send + 'static> + Clone {
        tower::service_fn(move |()| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, ProxyError>(7u8)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_table() {
        let cases = [
            (None, 10_000, Some(7)),
            (Some(100), 99, Some(7)),
            (Some(100), 101, None),
        ];
        for (timeout, delay, want) in cases {
            let svc = TimeoutLayer::new(timeout.map(Duration::from_millis))
                .layer(slow(Duration::from_millis(delay)));
            let got = svc.oneshot(()).await;
            match want {
                Some(v) => assert_eq!(got.ok(), Some(v), "{timeout:?} {delay}"),
                None => assert!(
                    matches!(got, Err(ProxyError::Timeout { after }) if after.as_millis() == 100)
                ),
            }
        }
    }
}
