//! Certificates of the identities running on this node: fetched before traffic for them is
//! routed, fetched again in the background while the CA refuses one, rotated at half-life,
//! retired (rotation stopped) once no local pod has the identity, and the per-identity server
//! TLS configs the HBONE listener presents.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use mesh_core::{
    backoff::Backoff,
    drain::DrainWatch,
    identity::{CertificateSource, SourceError, SpiffeId},
    tls::{self, IdentityCert, TlsError},
};
use tokio::sync::Notify;

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The source did not issue.
    #[error("fetching certificate: {0}")]
    Fetch(#[from] SourceError),
    /// The certificate could not be installed.
    #[error("installing certificate: {0}")]
    Install(#[from] TlsError),
}

/// A certificate held for a local identity, with its rotation.
struct Held {
    cert: Arc<IdentityCert>,
    server: Arc<rustls::ServerConfig>,
    /// Dropping it stops the rotation task (`None` until rotation starts).
    rotation: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One certificate (and server config) per local identity.
#[derive(Default)]
pub struct CertManager {
    certs: RwLock<HashMap<SpiffeId, Held>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("identities", &self.identities())
            .finish()
    }
}

impl CertManager {
    /// Fetches certificates for the identities not held yet and starts their rotation. Existing
    /// certificates are kept; [`Self::retain`] retires the ones no longer needed. An identity
    /// the CA refuses does not hold back the others: every failure is returned, by identity
    /// (that identity's mTLS traffic is refused until [`spawn_refetch`] gets it one).
    pub async fn ensure(
        &self,
        identities: BTreeSet<SpiffeId>,
        source: Arc<dyn CertificateSource>,
        drain: &DrainWatch,
    ) -> Vec<(SpiffeId, CertsError)> {
        let mut failures = Vec::new();
        for identity in identities {
            if self.get(&identity).is_some() {
                continue;
            }
            match fetch(&identity, source.as_ref()).await {
                Ok(mut held) => {
                    held.rotation = Some(spawn_rotation(&held.cert, source.clone(), drain));
                    self.write().insert(identity, held);
                }
                Err(error) => failures.push((identity, error)),
            }
        }
        failures
    }

    /// Retires every identity not in `keep`: its certificate is no longer presented or renewed
    /// (a pod that left must not have the CA asked for it forever). Connections already using
    /// it keep their copy until they end. Returns how many were retired.
    pub fn retain(&self, keep: &BTreeSet<SpiffeId>) -> usize {
        let mut certs = self.write();
        let before = certs.len();
        certs.retain(|identity, _| {
            let kept = keep.contains(identity);
            if !kept {
                tracing::info!(%identity, "no local pod has this identity any more: certificate retired");
            }
            kept
        });
        before - certs.len()
    }

    /// The certificate of a local identity.
    pub fn get(&self, identity: &SpiffeId) -> Option<Arc<IdentityCert>> {
        self.read().get(identity).map(|held| held.cert.clone())
    }

    /// The server config presenting a local identity.
    pub fn server_config(&self, identity: &SpiffeId) -> Option<Arc<rustls::ServerConfig>> {
        self.read().get(identity).map(|held| held.server.clone())
    }

    /// Identities held.
    pub fn identities(&self) -> Vec<SpiffeId> {
        let mut ids: Vec<_> = self.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SpiffeId, Held>> {
        // A plain map: a panicking writer cannot leave it half-updated.
        self.certs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SpiffeId, Held>> {
        self.certs.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// First and longest wait between attempts to fetch missing certificates.
const REFETCH_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// Fetches, until `drain`, the certificates of the identities `wanted()` names that `certs` does
/// not hold. Woken by `wake` when an update or start-up could not get some (it just tried, so
/// the first retry already waits), it retries after a jittered backoff (1 s doubling to 60 s)
/// until none is missing, so a CA outage is not hammered by every node.
pub fn spawn_refetch(
    certs: Arc<CertManager>,
    wanted: impl Fn() -> BTreeSet<SpiffeId> + Send + 'static,
    source: Arc<dyn CertificateSource>,
    wake: Arc<Notify>,
    mut drain: DrainWatch,
) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(REFETCH_BACKOFF.0, REFETCH_BACKOFF.1);
        loop {
            tokio::select! {
                () = wake.notified() => {}
                () = drain.signaled() => return,
            }
            backoff.reset();
            loop {
                let delay = backoff.next(false);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = drain.signaled() => return,
                }
                let missing: BTreeSet<SpiffeId> = wanted()
                    .into_iter()
                    .filter(|identity| certs.get(identity).is_none())
                    .collect();
                if missing.is_empty() {
                    break;
                }
                let failures = certs.ensure(missing, source.clone(), &drain).await;
                if failures.is_empty() {
                    break;
                }
                for (identity, error) in &failures {
                    tracing::warn!(%identity, %error, "certificate still missing; its mTLS traffic is refused; retrying");
                }
            }
        }
    });
}

/// Rotates `cert` until `drain` fires or the returned sender is dropped.
fn spawn_rotation(
    cert: &Arc<IdentityCert>,
    source: Arc<dyn CertificateSource>,
    drain: &DrainWatch,
) -> tokio::sync::oneshot::Sender<()> {
    let (retire, retired) = tokio::sync::oneshot::channel::<()>();
    let rotation = cert.clone().rotate(source, drain.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = rotation => {}
            _ = retired => {}
        }
    });
    retire
}

/// A certificate for `identity` from `source`, not rotating yet.
async fn fetch(identity: &SpiffeId, source: &dyn CertificateSource) -> Result<Held, CertsError> {
    let cert = IdentityCert::new(&source.fetch(identity).await?)?;
    let server = tls::server_config(cert.clone())?;
    Ok(Held {
        cert,
        server,
        rotation: None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_core::identity::{ca::CertificateAuthority, InProcessSource};

    use super::*;

    fn id(sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/apps/sa/{sa}")
            .parse()
            .expect("spiffe id")
    }

    #[tokio::test]
    async fn a_retired_identity_stops_rotating_and_is_no_longer_presented() {
        let ca = CertificateAuthority::self_signed("cluster.local").expect("ca");
        let source: Arc<dyn CertificateSource> = Arc::new(InProcessSource::new(
            Arc::new(ca),
            Duration::from_secs(3600),
        ));
        let (_drain, watch) = mesh_core::drain::channel();
        let manager = CertManager::default();
        let both = BTreeSet::from([id("stays"), id("leaves")]);
        let failures = manager.ensure(both, source, &watch).await;
        assert!(failures.is_empty(), "{failures:?}");
        let leaving = manager.get(&id("leaves")).expect("held");
        // Held by the manager (certificate and server config), its rotation task and this test.
        assert!(Arc::strong_count(&leaving) > 2);
        assert_eq!(manager.retain(&BTreeSet::from([id("stays")])), 1);
        assert!(manager.get(&id("leaves")).is_none());
        assert!(manager.server_config(&id("leaves")).is_none());
        assert!(manager.get(&id("stays")).is_some());
        // The rotation task ended and dropped its reference: nothing renews it any more.
        for _ in 0..100 {
            if Arc::strong_count(&leaving) == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "rotation of a retired identity still running ({} references)",
            Arc::strong_count(&leaving)
        );
    }
}
