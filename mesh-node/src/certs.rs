//! Certificates of the identities running on this node: fetched before traffic for them is
//! routed, rotated at half-life, and the per-identity server TLS configs the HBONE listener
//! presents.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
};

use mesh_core::{
    drain::DrainWatch,
    identity::{CertificateSource, SourceError, SpiffeId},
    tls::{self, IdentityCert, TlsError},
};

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

type Entry = (Arc<IdentityCert>, Arc<rustls::ServerConfig>);

/// One certificate (and server config) per local identity.
#[derive(Default)]
pub struct CertManager {
    certs: RwLock<HashMap<SpiffeId, Entry>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("identities", &self.identities())
            .finish()
    }
}

impl CertManager {
    /// Fetches a certificate for every identity.
    pub async fn load(
        identities: BTreeSet<SpiffeId>,
        source: &dyn CertificateSource,
    ) -> Result<Self, CertsError> {
        let manager = Self::default();
        for identity in identities {
            let entry = fetch(&identity, source).await?;
            manager.write().insert(identity, entry);
        }
        Ok(manager)
    }

    /// Fetches certificates for the identities not held yet and starts their rotation. Existing
    /// certificates are kept (identities that left the node keep rotating until shutdown).
    pub async fn ensure(
        &self,
        identities: BTreeSet<SpiffeId>,
        source: Arc<dyn CertificateSource>,
        drain: &DrainWatch,
    ) -> Result<(), CertsError> {
        for identity in identities {
            if self.get(&identity).is_some() {
                continue;
            }
            let entry = fetch(&identity, source.as_ref()).await?;
            tokio::spawn(entry.0.clone().rotate(source.clone(), drain.clone()));
            self.write().insert(identity, entry);
        }
        Ok(())
    }

    /// The certificate of a local identity.
    pub fn get(&self, identity: &SpiffeId) -> Option<Arc<IdentityCert>> {
        self.read().get(identity).map(|(cert, _)| cert.clone())
    }

    /// The server config presenting a local identity.
    pub fn server_config(&self, identity: &SpiffeId) -> Option<Arc<rustls::ServerConfig>> {
        self.read().get(identity).map(|(_, config)| config.clone())
    }

    /// Identities held.
    pub fn identities(&self) -> Vec<SpiffeId> {
        let mut ids: Vec<_> = self.read().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Starts one rotation task per certificate; each ends when `drain` fires.
    pub fn spawn_rotation(&self, source: Arc<dyn CertificateSource>, drain: &DrainWatch) {
        for (cert, _) in self.read().values() {
            tokio::spawn(cert.clone().rotate(source.clone(), drain.clone()));
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SpiffeId, Entry>> {
        // A plain map: a panicking writer cannot leave it half-updated.
        self.certs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SpiffeId, Entry>> {
        self.certs.write().unwrap_or_else(|p| p.into_inner())
    }
}

async fn fetch(identity: &SpiffeId, source: &dyn CertificateSource) -> Result<Entry, CertsError> {
    let cert = IdentityCert::new(&source.fetch(identity).await?)?;
    let server = tls::server_config(cert.clone())?;
    Ok((cert, server))
}
