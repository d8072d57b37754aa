//! Fault injection as a tower layer (Istio `HTTPFaultInjection`): delay and/or abort a
//! percentage of requests, decided by an injectable random source so tests are deterministic.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::StatusCode;
use tower::{Layer, Service};

use crate::{config::FaultConfig, proxy::ProxyError, rng::SharedRng};

/// Injects the configured faults.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    fault: FaultConfig,
    rng: SharedRng,
}

impl FaultLayer {
    /// A layer for `fault`, rolling dice with `rng`.
    pub fn new(fault: FaultConfig, rng: SharedRng) -> Self {
        Self { fault, rng }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
    layer: FaultLayer,
}

impl<S, R> Service<R> for Fault<S>
where
    S: Service<R, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let FaultLayer { fault, rng } = self.layer.clone();
        let inner = self.inner.clone();
        // Dice are rolled now, in call order, so a test's sequence maps to requests.
        let delay = fault
            .delay
            .as_ref()
            .filter(|d| rng.chance(d.percentage))
            .map(|d| d.fixed_delay.0);
        let abort = fault
            .abort
            .as_ref()
            .filter(|a| rng.chance(a.percentage))
            .map(|a| a.http_status);
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(code) = abort {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Err(ProxyError::FaultAbort { status });
            }
            tower::ServiceExt::oneshot(inner, req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use tokio::time::Instant;
    use tower::ServiceExt;

    use super::*;
    use crate::{config::from_yaml, rng::Sequence};

    #[tokio::test(start_paused = true)]
    async fn fault_table() {
        // Rolls are below(1_000_000): 0 always hits a non-zero percentage, 999_999 misses
        // anything under 100. Each case: (yaml, rolls [delay, abort], delayed?, aborted status).
        let cases = [
            ("{delay: {percentage: 50, fixed_delay: 2s}}", vec![0], true, None),
            ("{delay: {percentage: 50, fixed_delay: 2s}}", vec![999_999], false, None),
            ("{abort: {percentage: 10, http_status: 418}}", vec![0], false, Some(418)),
            ("{abort: {percentage: 10, http_status: 418}}", vec![999_999], false, None),
            (
                "{delay: {percentage: 100, fixed_delay: 2s}, abort: {percentage: 100, http_status: 503}}",
                vec![0, 0],
                true,
                Some(503),
            ),
        ];
        for (yaml, rolls, delayed, aborted) in cases {
            let fault: FaultConfig = from_yaml(yaml).expect("yaml");
            let rng: SharedRng = Arc::new(Sequence::new(rolls));
            let svc = FaultLayer::new(fault, rng)
                .layer(tower::service_fn(|()| async { Ok::<_, ProxyError>(()) }));
            let start = Instant::now();
            let got = svc.oneshot(()).await;
            assert_eq!(start.elapsed() >= Duration::from_secs(2), delayed, "{yaml}");
            match aborted {
                None => assert!(got.is_ok(), "{yaml}"),
                Some(code) => assert!(
                    matches!(got, Err(ProxyError::FaultAbort { status }) if status.as_u16() == code),
                    "{yaml}"
                ),
            }
        }
    }
}
