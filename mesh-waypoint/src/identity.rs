//! The waypoint's own identity, `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`:
//! the first certificate is fetched from mesh-control's CA (CSR through
//! [`mesh_core::identity::GrpcSource`]), retried with capped backoff because control may start
//! after the waypoint; afterwards [`IdentityCert::rotate`] renews it at half-life
//! (see [`crate::app::HboneConfig::rotation`]).

use std::{sync::Arc, time::Duration};

use mesh_core::{
    identity::{CertificateSource, SpiffeId},
    tls::{IdentityCert, TlsError},
};

/// First retry delay; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Cap on the retry delay.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Fetches the first certificate for `identity`, retrying source failures forever (the caller
/// bounds the wait, e.g. by racing a shutdown signal). A certificate that does not load is
/// returned as an error at once: retrying would not fix it.
pub async fn first_certificate(
    identity: &SpiffeId,
    source: &dyn CertificateSource,
) -> Result<Arc<IdentityCert>, TlsError> {
    let mut retry = FIRST_RETRY;
    loop {
        match source.fetch(identity).await {
            Ok(cert) => {
                tracing::info!(%identity, not_after = ?cert.not_after(), "waypoint certificate issued");
                return IdentityCert::new(&cert);
            }
            Err(error) => {
                tracing::warn!(%identity, %error, ?retry, "waypoint certificate not issued yet, retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::future::BoxFuture;
    use mesh_core::identity::{
        ca::CertificateAuthority, source::DEFAULT_VALIDITY, InProcessSource, SourceError,
        WorkloadCert,
    };

    use super::*;

    /// Fails `failures` times (control not up yet), then issues.
    struct Flaky {
        inner: InProcessSource,
        failures: u32,
        calls: AtomicU32,
    }

    impl CertificateSource for Flaky {
        fn fetch(&self, id: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, SourceError>> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                let error = SourceError::Timeout {
                    identity: id.to_string(),
                    after: Duration::from_secs(10),
                };
                return Box::pin(async move { Err(error) });
            }
            self.inner.fetch(id)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_certificate_retries_until_the_ca_answers() {
        let ca = Arc::new(CertificateAuthority::self_signed("cluster.local").expect("ca"));
        let source = Flaky {
            inner: InProcessSource::new(ca, DEFAULT_VALIDITY),
            failures: 3,
            calls: AtomicU32::new(0),
        };
        let id: SpiffeId = "spiffe://cluster.local/ns/mesh/sa/waypoint"
            .parse()
            .expect("id");
        let started = tokio::time::Instant::now();
        let fetch = first_certificate(&id, &source);
        let cert = tokio::time::timeout(Duration::from_secs(60), fetch)
            .await
            .expect("issued in time")
            .expect("loads");
        assert_eq!(cert.identity(), &id);
        assert_eq!(source.calls.load(Ordering::SeqCst), 4);
        // 0.5 s + 1 s + 2 s of backoff before the fourth attempt.
        assert_eq!(started.elapsed(), Duration::from_millis(3500));
    }
}
