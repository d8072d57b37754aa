//! Handshake tests over in-memory pipes with a test CA.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use rustls::{pki_types::UnixTime, time_provider::TimeProvider};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::{
    drain,
    identity::{
        ca::CertificateAuthority, CertificateSource, InProcessSource, SourceError, WorkloadCert,
    },
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn id(text: &str) -> SpiffeId {
    text.parse().unwrap()
}

fn source(ca: CertificateAuthority) -> InProcessSource {
    InProcessSource::new(Arc::new(ca), DAY)
}

fn cert(source: &InProcessSource, identity: &str) -> Arc<IdentityCert> {
    IdentityCert::new(&source.issue(&id(identity)).unwrap()).unwrap()
}

type Outcome = (Result<SpiffeId, String>, Result<SpiffeId, String>);

/// Runs one handshake; returns (identity the client saw, identity the server saw).
async fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Outcome {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    // Each side keeps its stream until both finish: the server writes session tickets after
    // the client is done, which fails if the client end is already dropped.
    let client_side = async {
        match TlsConnector::from(client).connect(name, c).await {
            Ok(tls) => (
                peer_identity(tls.get_ref().1).map_err(|e| e.to_string()),
                Some(tls),
            ),
            Err(e) => (Err(e.to_string()), None),
        }
    };
    let server_side = async {
        match TlsAcceptor::from(server).accept(s).await {
            Ok(tls) => (
                peer_identity(tls.get_ref().1).map_err(|e| e.to_string()),
                Some(tls),
            ),
            Err(e) => (Err(e.to_string()), None),
        }
    };
    let both = async { tokio::join!(client_side, server_side) };
    let ((client_seen, _c), (server_seen, _s)) =
        tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("handshake hung");
    (client_seen, server_seen)
}

#[tokio::test]
async fn mutual_handshake_yields_both_identities() {
    let src = source(CertificateAuthority::self_signed("cluster.local").unwrap());
    let client = cert(&src, "spiffe://cluster.local/ns/a/sa/client");
    let server = cert(&src, "spiffe://cluster.local/ns/b/sa/server");
    let expected = vec![server.identity().clone()];
    let (seen_by_client, seen_by_server) = handshake(
        client_config(client.clone(), expected).unwrap(),
        server_config(server.clone()).unwrap(),
    )
    .await;
    assert_eq!(seen_by_client.unwrap(), *server.identity());
    assert_eq!(seen_by_server.unwrap(), *client.identity());
}

#[tokio::test]
async fn client_rejects_unexpected_server_identity() {
    let src = source(CertificateAuthority::self_signed("cluster.local").unwrap());
    let client = cert(&src, "spiffe://cluster.local/ns/a/sa/client");
    let server = cert(&src, "spiffe://cluster.local/ns/b/sa/impostor");
    let expected = vec![id("spiffe://cluster.local/ns/b/sa/server")];
    let (seen_by_client, seen_by_server) = handshake(
        client_config(client, expected).unwrap(),
        server_config(server).unwrap(),
    )
    .await;
    let err = seen_by_client.unwrap_err();
    assert!(err.contains("ApplicationVerificationFailure"), "{err}");
    assert!(seen_by_server.is_err());
}

#[tokio::test]
async fn server_from_untrusted_ca_is_rejected() {
    let ours = source(CertificateAuthority::self_signed("cluster.local").unwrap());
    let theirs = source(CertificateAuthority::self_signed("cluster.local").unwrap());
    let client = cert(&theirs, "spiffe://cluster.local/ns/a/sa/client");
    let server = cert(&ours, "spiffe://cluster.local/ns/b/sa/server");
    let expected = vec![server.identity().clone()];
    let (seen_by_client, _) = handshake(
        client_config(client, expected).unwrap(),
        server_config(server).unwrap(),
    )
    .await;
    // Both roots share a subject name, so webpki finds the wrong issuer and the signature fails.
    let err = seen_by_client.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
}

/// A CA without a fixed trust domain (plug-in), so one root can sign two trust domains.
fn multi_domain_source() -> InProcessSource {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root = params.self_signed(&key).unwrap();
    source(CertificateAuthority::from_pem(&root.pem(), &key.serialize_pem()).unwrap())
}

#[tokio::test]
async fn server_rejects_client_from_other_trust_domain() {
    let src = multi_domain_source();
    let client = cert(&src, "spiffe://other.domain/ns/a/sa/client");
    let server = cert(&src, "spiffe://cluster.local/ns/b/sa/server");
    let expected = vec![server.identity().clone()];
    let (_, seen_by_server) = handshake(
        client_config(client, expected).unwrap(),
        server_config(server).unwrap(),
    )
    .await;
    let err = seen_by_server.unwrap_err();
    assert!(err.contains("ApplicationVerificationFailure"), "{err}");
}

/// A clock `offset` ahead of the real one.
#[derive(Debug)]
struct Ahead(Duration);

impl TimeProvider for Ahead {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                + self.0,
        ))
    }
}

#[tokio::test]
async fn expired_certificates_are_rejected() {
    let src = source(CertificateAuthority::self_signed("cluster.local").unwrap());
    let client = cert(&src, "spiffe://cluster.local/ns/a/sa/client");
    let server = cert(&src, "spiffe://cluster.local/ns/b/sa/server");
    let expected = vec![server.identity().clone()];
    let later = Arc::new(Ahead(2 * DAY));
    let (seen_by_client, _) = handshake(
        client_config_with_time(client.clone(), expected, later.clone()).unwrap(),
        server_config(server.clone()).unwrap(),
    )
    .await;
    assert!(seen_by_client.unwrap_err().contains("Expired"));
    let expected = vec![server.identity().clone()];
    let (_, seen_by_server) = handshake(
        client_config(client, expected).unwrap(),
        server_config_with_time(server, later).unwrap(),
    )
    .await;
    assert!(seen_by_server.unwrap_err().contains("Expired"));
}

#[tokio::test]
async fn replaced_certificate_is_presented_on_next_handshake() {
    let src = source(CertificateAuthority::self_signed("cluster.local").unwrap());
    let client = cert(&src, "spiffe://cluster.local/ns/a/sa/client");
    let server = cert(&src, "spiffe://cluster.local/ns/b/sa/server");
    let before = server.loaded().key.cert[0].clone();
    server
        .replace(&src.issue(server.identity()).unwrap())
        .unwrap();
    let after = server.loaded().key.cert[0].clone();
    assert_ne!(before, after);
    let expected = vec![server.identity().clone()];
    let (seen_by_client, _) = handshake(
        client_config(client, expected).unwrap(),
        server_config(server.clone()).unwrap(),
    )
    .await;
    assert_eq!(seen_by_client.unwrap(), *server.identity());
    let other = src.issue(&id("spiffe://cluster.local/ns/x/sa/y")).unwrap();
    assert!(server.replace(&other).is_err());
}

/// Counts fetches and delegates to an in-process source.
struct Counting(InProcessSource, AtomicUsize);

impl CertificateSource for Counting {
    fn fetch(&self, identity: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, SourceError>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.fetch(identity)
    }
}

#[tokio::test]
async fn rotation_task_renews_due_certificates_and_stops_on_drain() {
    let ca = Arc::new(CertificateAuthority::self_signed("cluster.local").unwrap());
    // 2 s validity back-dated by the CA's skew allowance: already past half-life, so due now.
    let short = InProcessSource::new(ca.clone(), Duration::from_secs(2));
    let server = IdentityCert::new(
        &short
            .issue(&id("spiffe://cluster.local/ns/b/sa/s"))
            .unwrap(),
    )
    .unwrap();
    let first_expiry = server.not_after();
    let counting = Arc::new(Counting(InProcessSource::new(ca, DAY), AtomicUsize::new(0)));
    let (trigger, watch) = drain::channel();
    let task = tokio::spawn(server.clone().rotate(counting.clone(), watch));
    tokio::time::timeout(Duration::from_secs(10), async {
        while counting.1.load(Ordering::SeqCst) == 0 || server.not_after() == first_expiry {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("rotation never happened");
    assert!(server.not_after() > first_expiry + DAY / 2);
    assert_eq!(
        trigger.drain(Duration::from_secs(5)).await,
        drain::DrainOutcome::Complete
    );
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    // A one-day certificate is not due again, so only one renewal happened.
    assert_eq!(counting.1.load(Ordering::SeqCst), 1);
}
