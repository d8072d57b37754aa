//! GrpcSource against a real tonic server on loopback.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{transport::Server, Request, Response, Status};

use super::*;
use crate::{
    identity::ca::CertificateAuthority,
    proto::control::v1::{
        certificate_service_server::{CertificateService, CertificateServiceServer},
        CreateCertificateResponse,
    },
};

/// Signs for the identity in the request, or a fixed other identity when `lie` is set; accepts
/// the tokens `node-a-token*` and records every `authorization` value it receives.
struct TestCaService {
    ca: Arc<CertificateAuthority>,
    lie: bool,
    seen: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl CertificateService for TestCaService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.seen.lock().unwrap().push(bearer.clone());
        if !bearer.starts_with("Bearer node-a-token") {
            return Err(Status::unauthenticated("bad token"));
        }
        let body = request.into_inner();
        let wanted = if self.lie {
            "spiffe://cluster.local/ns/kube-system/sa/admin".to_owned()
        } else {
            body.identity
        };
        let identity: SpiffeId = wanted
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let validity = Duration::from_secs(u64::try_from(body.validity_duration).unwrap_or(0));
        let chain = self
            .ca
            .sign_csr(&body.csr, &identity, validity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: chain,
        }))
    }
}

async fn serve(ca: Arc<CertificateAuthority>, lie: bool) -> SocketAddr {
    serve_recording(ca, lie, Arc::default()).await
}

async fn serve_recording(
    ca: Arc<CertificateAuthority>,
    lie: bool,
    seen: Arc<Mutex<Vec<String>>>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = CertificateServiceServer::new(TestCaService { ca, lie, seen });
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .unwrap()
}

async fn source(addr: SocketAddr, token: &str, bundle: &str) -> GrpcSource {
    let channel = channel(addr).await;
    GrpcSource::new(channel, Some(token), bundle, Duration::from_secs(3600)).unwrap()
}

fn id() -> SpiffeId {
    "spiffe://cluster.local/ns/app/sa/web".parse().unwrap()
}

#[tokio::test]
async fn fetches_a_certificate_for_the_identity() {
    let ca = Arc::new(CertificateAuthority::self_signed("cluster.local").unwrap());
    let addr = serve(ca.clone(), false).await;
    let grpc = source(addr, "node-a-token", &ca.trust_bundle_pem()).await;
    let cert = tokio::time::timeout(REQUEST_TIMEOUT, grpc.fetch(&id()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cert.identity(), &id());
    assert_eq!(cert.chain().len(), 2);
    let life = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert!(life >= Duration::from_secs(3600) && life <= Duration::from_secs(3600 + 120));
}

#[tokio::test]
async fn refusals_and_wrong_identities_are_errors() {
    let ca = Arc::new(CertificateAuthority::self_signed("cluster.local").unwrap());
    let honest = serve(ca.clone(), false).await;
    let bad_token = source(honest, "wrong", &ca.trust_bundle_pem()).await;
    let err = bad_token.fetch(&id()).await.unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::Rpc {
                code: tonic::Code::Unauthenticated,
                ..
            }
        ),
        "{err}"
    );
    let liar = serve(ca.clone(), true).await;
    let fooled = source(liar, "node-a-token", &ca.trust_bundle_pem()).await;
    let err = fooled.fetch(&id()).await.unwrap_err();
    assert!(matches!(err, SourceError::WrongIdentity { .. }), "{err}");
    assert!(GrpcSource::new(
        Channel::from_static("http://127.0.0.1:1").connect_lazy(),
        Some("bad\ntoken"),
        "",
        Duration::from_secs(1)
    )
    .is_err());
}

/// Kubernetes rotates projected tokens by replacing the file: every request reads it afresh.
#[tokio::test]
async fn a_token_file_is_read_again_for_every_request() {
    let ca = Arc::new(CertificateAuthority::self_signed("cluster.local").unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve_recording(ca.clone(), false, seen.clone()).await;
    let dir = std::env::temp_dir().join(format!("weft-grpc-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "node-a-token-first\n").unwrap();
    let token = BearerToken::file(&path);
    let grpc = GrpcSource::with_token(
        channel(addr).await,
        Some(token),
        &ca.trust_bundle_pem(),
        Duration::from_secs(3600),
    );
    let fetch = |grpc: &GrpcSource| tokio::time::timeout(REQUEST_TIMEOUT, grpc.fetch(&id()));
    fetch(&grpc).await.unwrap().expect("first token accepted");
    // Rotation: a new file is renamed over the old one (what kubelet's atomic writer does).
    let next = dir.join("token.next");
    std::fs::write(&next, "node-a-token-second").unwrap();
    std::fs::rename(&next, &path).unwrap();
    fetch(&grpc).await.unwrap().expect("rotated token accepted");
    std::fs::remove_file(&path).unwrap();
    let err = fetch(&grpc).await.unwrap().unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        matches!(&err, SourceError::Config(m) if m.contains("cannot read token file")),
        "{err}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["Bearer node-a-token-first", "Bearer node-a-token-second"],
        "the missing file failed before any request was sent"
    );
}

#[tokio::test]
async fn token_files_are_checked() {
    let dir = std::env::temp_dir().join(format!("weft-grpc-badtoken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("empty", b" \n".to_vec(), "is empty"),
        ("huge", vec![b'a'; 70 * 1024], "larger than 65536 bytes"),
        ("binary", b"tok\nen".to_vec(), "not printable ascii"),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = BearerToken::file(&path).header().await.unwrap_err();
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let inline = BearerToken::inline("  secret-token \n").unwrap();
    assert_eq!(inline.header().await.unwrap(), "Bearer secret-token");
    assert!(!format!("{inline:?}").contains("secret"), "debug redacts");
    let mut request = tonic::Request::new(());
    inline.attach(&mut request).await.unwrap();
    assert_eq!(
        request.metadata().get("authorization").unwrap(),
        "Bearer secret-token"
    );
}
