//! A pod whose certificate the CA refuses: the node still starts and applies the mesh, that
//! pod's mTLS traffic is refused both ways (never sent in plaintext instead), and every other
//! pod on the node is served as usual.

mod tunnel_support;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use mesh_core::identity::{CertificateSource, SourceError, SpiffeId, WorkloadCert};
use tunnel_support::*;

/// Issues from the test CA, except for `refused`.
struct RefusingSource {
    inner: Arc<dyn CertificateSource>,
    refused: SpiffeId,
}

impl CertificateSource for RefusingSource {
    fn fetch(&self, identity: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, SourceError>> {
        if *identity == self.refused {
            let error = SourceError::Timeout {
                identity: identity.to_string(),
                after: Duration::from_secs(10),
            };
            return Box::pin(async move { Err(error) });
        }
        self.inner.fetch(identity)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_a_certificate_is_refused_and_the_others_are_served() {
    let ca = Arc::new(TestCa::new());
    let db: SpiffeId = "spiffe://cluster.local/ns/data/sa/db".parse().unwrap();
    let options = MeshOptions {
        node_b_source: Some(Arc::new(RefusingSource {
            inner: ca.source(),
            refused: db.clone(),
        })),
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with_ca(options, ca).await;
    assert!(mesh.b.certificate(&db).is_none());
    let reasons = mesh.b.not_ready_reasons();
    assert!(
        reasons.iter().any(|r| r.contains("sa/db")),
        "readiness names the pod: {reasons:?}"
    );

    // Inbound to db over HBONE: node b has no certificate to present for it, so the TLS
    // handshake fails and nothing reaches db (no plaintext fallback).
    let mut to_db = mesh.connect(mesh.db).await;
    expect_closed(&mut to_db).await;
    let b = mesh.b.metrics().encode();
    assert!(
        !b.contains("destination_workload=\"db-0\""),
        "db served without a certificate: {b}"
    );

    // cache-0 on the same node is served as usual.
    let mut to_cache = mesh.connect(mesh.cache).await;
    round_trip(&mut to_cache, b"cache still served")
        .await
        .unwrap();
}
