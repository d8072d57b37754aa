//! The current certificate for one identity, hot-swappable for rotation.
//!
//! rustls asks the resolver for a key on every handshake, so swapping the [`IdentityCert`]'s
//! contents changes what new connections present without touching live ones. Trust anchors are
//! swapped together with the certificate, so a trust-bundle change rolls out the same way.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{
    client::ResolvesClientCert,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    SignatureScheme,
};
use rustls_pki_types::TrustAnchor;

use super::{provider, TlsError};
use crate::{
    backoff::Backoff,
    drain::DrainWatch,
    identity::{CertificateSource, SpiffeId, WorkloadCert},
};

/// First retry delay after a failed renewal (jittered); doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Cap on the renewal retry delay.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One loaded certificate with everything a handshake needs.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) anchors: Vec<TrustAnchor<'static>>,
    pub(crate) refresh_at: SystemTime,
    pub(crate) not_after: SystemTime,
}

/// The current certificate of one identity. Share it as `Arc<IdentityCert>`.
#[derive(Debug)]
pub struct IdentityCert {
    identity: SpiffeId,
    current: ArcSwap<Loaded>,
}

impl IdentityCert {
    /// Loads `cert`; the identity is fixed for the lifetime of this value.
    pub fn new(cert: &WorkloadCert) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            identity: cert.identity().clone(),
            current: ArcSwap::from_pointee(load(cert)?),
        }))
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Replaces the certificate (rotation). Fails, keeping the old one, if `cert` is for another
    /// identity or does not load.
    pub fn replace(&self, cert: &WorkloadCert) -> Result<(), TlsError> {
        if cert.identity() != &self.identity {
            return Err(TlsError::Config {
                identity: self.identity.to_string(),
                source: rustls::Error::General(format!(
                    "replacement certificate is for {}",
                    cert.identity()
                )),
            });
        }
        self.current.store(Arc::new(load(cert)?));
        Ok(())
    }

    /// When the current certificate should be renewed (its half-life).
    pub fn refresh_at(&self) -> SystemTime {
        self.current.load().refresh_at
    }

    /// The leaf certificate currently presented (changes on every rotation).
    pub fn leaf(&self) -> Option<rustls_pki_types::CertificateDer<'static>> {
        self.current.load().key.cert.first().cloned()
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.current.load().not_after
    }

    pub(crate) fn loaded(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Keeps this certificate fresh: sleeps until half-life, fetches a new one from `source`,
    /// swaps it in; retries failures with capped exponential backoff. Returns when `drain` fires.
    pub async fn rotate(
        self: Arc<Self>,
        source: Arc<dyn CertificateSource>,
        mut drain: DrainWatch,
    ) {
        let mut retry = Backoff::new(FIRST_RETRY, MAX_RETRY);
        loop {
            let wait = self
                .refresh_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = drain.signaled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.renew(source.as_ref()).await {
                Ok(()) => retry.reset(),
                Err(error) => {
                    let delay = retry.next(false);
                    tracing::warn!(identity = %self.identity, %error, retry_in = ?delay, "certificate renewal failed, will retry");
                    tokio::select! {
                        _ = drain.signaled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Fetches and installs one replacement now.
    pub async fn renew(&self, source: &dyn CertificateSource) -> Result<(), RenewError> {
        let cert = source.fetch(&self.identity).await?;
        // A certificate already due for renewal would make the rotation loop spin.
        if cert.refresh_at() <= SystemTime::now() {
            return Err(RenewError::Stale {
                identity: self.identity.to_string(),
                not_after: cert.not_after(),
            });
        }
        self.replace(&cert)?;
        tracing::info!(identity = %self.identity, not_after = ?cert.not_after(), "certificate rotated");
        Ok(())
    }
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The source could not issue.
    #[error(transparent)]
    Source(#[from] crate::identity::SourceError),
    /// The new certificate could not be installed.
    #[error(transparent)]
    Install(#[from] TlsError),
    /// The source returned a certificate already past half-life (or expired).
    #[error("certificate issued for {identity} is already due for renewal (not after {not_after:?}), is the ca clock or validity wrong?")]
    Stale {
        identity: String,
        not_after: SystemTime,
    },
}

fn load(cert: &WorkloadCert) -> Result<Loaded, TlsError> {
    let config_err = |source| TlsError::Config {
        identity: cert.identity().to_string(),
        source,
    };
    let key = CertifiedKey::from_der(cert.chain().to_vec(), cert.key(), &provider())
        .map_err(config_err)?;
    let anchors = trust_anchors(cert.roots())?;
    Ok(Loaded {
        key: Arc::new(key),
        anchors,
        refresh_at: cert.refresh_at(),
        not_after: cert.not_after(),
    })
}

/// The trust anchors of a trust bundle.
pub(crate) fn trust_anchors(
    roots: &[rustls_pki_types::CertificateDer<'_>],
) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    roots
        .iter()
        .map(|root| {
            webpki::anchor_from_trusted_cert(root)
                .map(|anchor| anchor.to_owned())
                .map_err(TlsError::TrustAnchor)
        })
        .collect()
}

impl ResolvesClientCert for IdentityCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for IdentityCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}
