//! GrpcSource against a real tonic server on loopback.

use std::{net::SocketAddr, sync::Arc};

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

/// Signs for the identity in the request, or a fixed other identity when `lie` is set.
struct TestCaService {
    ca: Arc<CertificateAuthority>,
    lie: bool,
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
            .and_then(|v| v.to_str().ok());
        if bearer != Some("Bearer node-a-token") {
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = CertificateServiceServer::new(TestCaService { ca, lie });
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn source(addr: SocketAddr, token: &str, bundle: &str) -> GrpcSource {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .unwrap();
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
