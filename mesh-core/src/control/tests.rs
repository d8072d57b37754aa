//! The control channel over real TLS on loopback: a tonic server behind [`tls_incoming`] and
//! clients verifying it with a trust bundle file.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use super::*;
use crate::{
    drain::{self, DrainTrigger},
    identity::{ca::CertificateAuthority, CertificateSource, InProcessSource},
    proto::control::v1::{
        certificate_service_client::CertificateServiceClient,
        certificate_service_server::{CertificateService, CertificateServiceServer},
        CreateCertificateRequest, CreateCertificateResponse,
    },
    tls::{server_auth_server_config, IdentityCert},
};

const WAIT: Duration = Duration::from_secs(10);

/// Answers with the `authorization` header it received, so tests see the token crossed.
struct Echo;

#[tonic::async_trait]
impl CertificateService for Echo {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: vec![bearer],
        }))
    }
}

struct Fixture {
    ca: Arc<CertificateAuthority>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _drain: DrainTrigger,
}

impl Fixture {
    /// mesh-control's stand-in, presenting `served` from `ca`, with `settings`.
    async fn start(settings: TlsIncomingSettings) -> Self {
        let ca = Arc::new(CertificateAuthority::self_signed("cluster.local").unwrap());
        let served = default_identity("cluster.local").unwrap();
        let source = InProcessSource::new(Arc::clone(&ca), Duration::from_secs(3600));
        let cert = IdentityCert::new(&source.fetch(&served).await.unwrap()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, watch) = drain::channel();
        let incoming = tls_incoming(
            listener,
            server_auth_server_config(cert).unwrap(),
            settings,
            watch,
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CertificateServiceServer::new(Echo))
                .serve_with_incoming(incoming),
        );
        Self {
            ca,
            addr,
            dir: tempfile::tempdir().unwrap(),
            _drain: trigger,
        }
    }

    /// Writes `pem` as the trust bundle and returns an endpoint expecting `identity`.
    fn endpoint(&self, pem: &str, identity: &str) -> ControlEndpoint {
        let file = self.dir.path().join("roots.pem");
        std::fs::write(&file, pem).unwrap();
        let tls = ControlTls {
            trust_bundle_file: file,
            identity: identity.parse().unwrap(),
        };
        ControlEndpoint::new(&format!("https://{}", self.addr), Some(tls)).unwrap()
    }
}

const CONTROL: &str = "spiffe://cluster.local/ns/weft-system/sa/mesh-control";

/// One call through `connection`: the `authorization` header the server saw.
async fn call(connection: &ControlConnection) -> Result<String, String> {
    let message = CreateCertificateRequest::default();
    let (channel, request) = tokio::time::timeout(WAIT, connection.open(message))
        .await
        .expect("bounded by the connect timeout")
        .map_err(|e| e.to_string())?;
    let response = CertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .map_err(|status| status.to_string())?;
    Ok(response.into_inner().cert_chain.concat())
}

#[test]
fn addresses_are_checked() {
    let tls = ControlTls {
        trust_bundle_file: "/roots.pem".into(),
        identity: CONTROL.parse().unwrap(),
    };
    let cases = [
        ("https://control:15012", None, "no trust bundle"),
        (
            "ftp://control:15012",
            Some(tls.clone()),
            "must start with https://",
        ),
        (
            "control:15012",
            Some(tls.clone()),
            "must start with https://",
        ),
        (
            "https://bad host:1",
            Some(tls.clone()),
            "invalid control address",
        ),
    ];
    for (address, tls, wanted) in cases {
        let error = ControlEndpoint::new(address, tls).unwrap_err().to_string();
        assert!(error.contains(wanted), "{address}: {error}");
        assert!(error.contains(address), "the address is named: {error}");
    }
    let plaintext = ControlEndpoint::new("http://control:15012", Some(tls)).unwrap();
    assert!(plaintext.tls().is_none(), "http:// is plaintext");
    assert_eq!(
        default_identity("example.org").unwrap().to_string(),
        "spiffe://example.org/ns/weft-system/sa/mesh-control"
    );
}

#[tokio::test]
async fn the_token_crosses_tls_to_a_verified_control_plane() {
    let fixture = Fixture::start(TlsIncomingSettings::default()).await;
    let mut connection =
        ControlConnection::new(fixture.endpoint(&fixture.ca.trust_bundle_pem(), CONTROL));
    connection.token = Some(BearerToken::inline("node-token").unwrap());
    assert_eq!(call(&connection).await.unwrap(), "Bearer node-token");
}

#[tokio::test]
async fn a_wrong_identity_or_foreign_root_is_refused() {
    let fixture = Fixture::start(TlsIncomingSettings::default()).await;
    let bundle = fixture.ca.trust_bundle_pem();
    let impostor = "spiffe://cluster.local/ns/weft-system/sa/someone-else";
    let error = call(&ControlConnection::new(fixture.endpoint(&bundle, impostor)))
        .await
        .unwrap_err();
    assert!(
        error.contains("tls handshake") && error.contains(impostor),
        "{error}"
    );

    let other_ca = CertificateAuthority::self_signed("cluster.local").unwrap();
    let foreign = fixture.endpoint(&other_ca.trust_bundle_pem(), CONTROL);
    let error = call(&ControlConnection::new(foreign)).await.unwrap_err();
    assert!(error.contains("tls handshake"), "{error}");

    let plaintext = ControlEndpoint::new(&format!("http://{}", fixture.addr), None).unwrap();
    assert!(
        call(&ControlConnection::new(plaintext)).await.is_err(),
        "a plaintext client cannot talk to the tls port"
    );
}

#[tokio::test]
async fn the_trust_bundle_is_reread_for_each_connection() {
    let fixture = Fixture::start(TlsIncomingSettings::default()).await;
    let other_ca = CertificateAuthority::self_signed("cluster.local").unwrap();
    let connection =
        ControlConnection::new(fixture.endpoint(&other_ca.trust_bundle_pem(), CONTROL));
    assert!(call(&connection).await.is_err(), "foreign root first");
    // The operator rotates the bundle file (a ConfigMap update): the same client now connects.
    let both = format!(
        "{}{}",
        other_ca.trust_bundle_pem(),
        fixture.ca.trust_bundle_pem()
    );
    let file = &connection.endpoint.tls().unwrap().trust_bundle_file;
    std::fs::write(file, both).unwrap();
    assert_eq!(call(&connection).await.unwrap(), "none");

    std::fs::write(file, "not pem").unwrap();
    let error = call(&connection).await.unwrap_err();
    assert!(error.contains("trust bundle"), "{error}");
}

#[tokio::test]
async fn stalled_and_garbage_handshakes_do_not_block_the_port() {
    let settings = TlsIncomingSettings {
        max_handshakes: 2,
        ..TlsIncomingSettings::default()
    };
    let failures = settings.handshake_failures.clone();
    let fixture = Fixture::start(settings).await;
    // One client connects and never speaks; another sends garbage and hangs up.
    let _stalled = tokio::net::TcpStream::connect(fixture.addr).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(fixture.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    drop(garbage);
    let connection =
        ControlConnection::new(fixture.endpoint(&fixture.ca.trust_bundle_pem(), CONTROL));
    assert_eq!(call(&connection).await.unwrap(), "none");
    assert_eq!(failures.get(), 1, "the garbage handshake is counted");
}

#[tokio::test]
async fn one_address_opening_idle_connections_cannot_take_every_handshake_slot() {
    let settings = TlsIncomingSettings {
        max_handshakes: 16,
        max_handshakes_per_source: 4,
        ..TlsIncomingSettings::default()
    };
    let fixture = Fixture::start(settings).await;
    // 64 silent connections from another loopback address: four times the global limit.
    let mut idle = Vec::new();
    for _ in 0..64 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(fixture.addr).await.unwrap());
    }
    // A node, from its own address, still gets through.
    let connection =
        ControlConnection::new(fixture.endpoint(&fixture.ca.trust_bundle_pem(), CONTROL));
    assert_eq!(call(&connection).await.unwrap(), "none");
    drop(idle);
}
