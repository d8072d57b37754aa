//! The CA served over an in-memory pipe to a real tonic client: issuance and refusals.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::identity::cert::generate_csr;
use mesh_core::identity::{SpiffeId, WorkloadCert};
use pb::certificate_service_client::CertificateServiceClient;
use tonic::transport::{Channel, Server};
use tonic::Code;

use super::*;
use crate::auth::TokenAuthenticator;
use crate::registry::{parse_yaml, Parsed, Registry, RegistryConfig};
use crate::store::Store;
use crate::testing::{serve_in_memory, with_token};

const TOKEN_A: &str = "token-for-node-a-0123";
const TOKEN_B: &str = "token-for-node-b-0123";

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app}
spec: {nodeName: node-a, serviceAccountName: web, containers: []}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: app}
spec: {nodeName: node-b, serviceAccountName: db, containers: []}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: out-1, namespace: app, labels: {app: out, weft.dev/dataplane-mode: none}}
spec: {nodeName: node-a, serviceAccountName: out, containers: []}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: out, namespace: app}
spec: {clusterIP: 10.96.0.3, selector: {app: out}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app}
spec: {clusterIP: 10.96.0.99, selector: {gateway: wp}, ports: [{name: hbone, port: 15008}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-1, namespace: app, labels: {gateway: wp, weft.dev/dataplane-mode: none}}
spec: {nodeName: node-b, serviceAccountName: waypoint, containers: []}
status: {podIP: 10.0.0.50}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: app, labels: {weft.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.2, selector: {app: db}, ports: [{port: 5432}]}

---
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: app, labels: {istio: ingress, weft.dev/dataplane-mode: none}}
spec: {nodeName: node-a, serviceAccountName: ingress, containers: []}
status: {podIP: 10.0.0.60}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: app}
spec: {selector: {istio: ingress}, servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*"]}]}
"#;

const WAYPOINT: &str = "spiffe://cluster.local/ns/app/sa/waypoint";
const INGRESS: &str = "spiffe://cluster.local/ns/app/sa/ingress";

struct Fixture {
    client: CertificateServiceClient<Channel>,
    trust_bundle: String,
}

async fn fixture(ca: CertificateAuthority) -> Fixture {
    let hub = Arc::new(Hub::with_feed_id("f".into(), 100));
    let store = Store::new(Registry::new(RegistryConfig::default()), Arc::clone(&hub));
    let mut parsed = Parsed::default();
    parse_yaml("c.yaml", CONFIG, &mut parsed);
    store.update(|r| r.replace_all(parsed));
    store.publish_now();
    let trust_bundle = ca.trust_bundle_pem();
    let auth = Arc::new(TokenAuthenticator::new([
        ("node-a", TOKEN_A),
        ("node-b", TOKEN_B),
    ]));
    let service = CaService::new(Arc::new(ca), auth, hub, CaSettings::default());
    let router = Server::builder()
        .add_service(pb::certificate_service_server::CertificateServiceServer::new(service));
    let client = CertificateServiceClient::new(serve_in_memory(router).await);
    Fixture {
        client,
        trust_bundle,
    }
}

fn id(text: &str) -> SpiffeId {
    text.parse().expect("spiffe id")
}

fn request(identity: &str, csr: &str, validity: i64) -> pb::CreateCertificateRequest {
    pb::CreateCertificateRequest {
        csr: csr.to_string(),
        validity_duration: validity,
        identity: identity.to_string(),
    }
}

const WEB: &str = "spiffe://cluster.local/ns/app/sa/web";

#[tokio::test]
async fn node_gets_certificate_for_its_own_pod() {
    let mut f = fixture(CertificateAuthority::self_signed("cluster.local").expect("ca")).await;
    let csr = generate_csr(&id(WEB)).expect("csr");
    let response = f
        .client
        .create_certificate(with_token(request(WEB, &csr.csr_pem, 3600), TOKEN_A))
        .await
        .expect("issued")
        .into_inner();
    assert_eq!(response.cert_chain.len(), 2, "leaf and root");
    assert_eq!(response.cert_chain[1].trim(), f.trust_bundle.trim());
    let cert = WorkloadCert::from_pem(&response.cert_chain, &csr.key_pem, &f.trust_bundle)
        .expect("valid chain");
    assert_eq!(cert.identity(), &id(WEB));
    let lifetime = cert
        .not_after()
        .duration_since(SystemTime::now())
        .expect("in future");
    assert!(
        lifetime <= Duration::from_secs(3600) && lifetime > Duration::from_secs(3000),
        "{lifetime:?}"
    );
}

/// Waypoint and ingress gateway pods are not enrolled, but their node obtains their service
/// account's certificate (and no other node does).
#[tokio::test]
async fn node_gets_certificate_for_a_waypoint_or_gateway_pod_it_runs() {
    let mut f = fixture(CertificateAuthority::self_signed("cluster.local").expect("ca")).await;
    for (identity, token, other) in [(WAYPOINT, TOKEN_B, TOKEN_A), (INGRESS, TOKEN_A, TOKEN_B)] {
        let csr = generate_csr(&id(identity)).expect("csr");
        let chain = f
            .client
            .create_certificate(with_token(request(identity, &csr.csr_pem, 0), token))
            .await
            .expect("issued to the pod's node")
            .into_inner()
            .cert_chain;
        let cert = WorkloadCert::from_pem(&chain, &csr.key_pem, &f.trust_bundle).expect("valid");
        assert_eq!(cert.identity(), &id(identity));
        let refused = f
            .client
            .create_certificate(with_token(request(identity, &csr.csr_pem, 0), other))
            .await
            .expect_err("another node");
        assert_eq!(refused.code(), Code::PermissionDenied, "{identity}");
    }
}

#[tokio::test]
async fn validity_is_capped_at_the_maximum() {
    let mut f = fixture(CertificateAuthority::self_signed("cluster.local").expect("ca")).await;
    let csr = generate_csr(&id(WEB)).expect("csr");
    let chain = f
        .client
        .create_certificate(with_token(
            request(WEB, &csr.csr_pem, 30 * 24 * 3600),
            TOKEN_A,
        ))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    let cert = WorkloadCert::from_pem(&chain, &csr.key_pem, &f.trust_bundle).expect("valid");
    let lifetime = cert
        .not_after()
        .duration_since(SystemTime::now())
        .expect("future");
    assert!(lifetime <= Duration::from_secs(24 * 3600), "{lifetime:?}");
}

#[tokio::test]
async fn refusals() {
    let mut f = fixture(CertificateAuthority::self_signed("cluster.local").expect("ca")).await;
    let csr = generate_csr(&id(WEB)).expect("csr").csr_pem;
    let cases: Vec<(
        &str,
        tonic::Request<pb::CreateCertificateRequest>,
        Code,
        &str,
    )> = vec![
        (
            "no token",
            tonic::Request::new(request(WEB, &csr, 0)),
            Code::Unauthenticated,
            "missing authorization",
        ),
        (
            "unknown token",
            with_token(request(WEB, &csr, 0), "not-a-known-token-123"),
            Code::Unauthenticated,
            "unknown bootstrap token",
        ),
        (
            "pod on another node",
            with_token(request(WEB, &csr, 0), TOKEN_B),
            Code::PermissionDenied,
            "node \"node-b\" runs no enrolled pod",
        ),
        (
            "no such service account",
            with_token(
                request("spiffe://cluster.local/ns/app/sa/ghost", &csr, 0),
                TOKEN_A,
            ),
            Code::PermissionDenied,
            "runs no enrolled pod",
        ),
        (
            "pod not enrolled, endpoint of a service no one uses as a waypoint",
            with_token(
                request("spiffe://cluster.local/ns/app/sa/out", &csr, 0),
                TOKEN_A,
            ),
            Code::PermissionDenied,
            "runs no enrolled pod",
        ),
        (
            "waypoint pod on another node",
            with_token(request(WAYPOINT, &csr, 0), TOKEN_A),
            Code::PermissionDenied,
            "node \"node-a\" runs no enrolled pod (nor waypoint or gateway pod)",
        ),
        (
            "foreign trust domain",
            with_token(request("spiffe://evil.org/ns/app/sa/web", &csr, 0), TOKEN_A),
            Code::PermissionDenied,
            "outside trust domain",
        ),
        (
            "malformed identity",
            with_token(request("web", &csr, 0), TOKEN_A),
            Code::InvalidArgument,
            "invalid identity",
        ),
        (
            "malformed csr",
            with_token(request(WEB, "-----BEGIN NOPE-----", 0), TOKEN_A),
            Code::InvalidArgument,
            "invalid csr",
        ),
    ];
    for (name, req, code, message) in cases {
        let err = f.client.create_certificate(req).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(err.message().contains(message), "{name}: {}", err.message());
    }
}

#[tokio::test]
async fn plugged_in_root_signs_and_is_the_chain_end() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let root = params.self_signed(&key).expect("root");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
    std::fs::write(&cert_path, root.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let source = CaSource::Files {
        cert_chain: cert_path,
        key: key_path,
    };
    let mut f = fixture(load_ca(&source, "cluster.local").expect("plug-in ca")).await;
    let csr = generate_csr(&id(WEB)).expect("csr");
    let chain = f
        .client
        .create_certificate(with_token(request(WEB, &csr.csr_pem, 0), TOKEN_A))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    assert_eq!(chain.last().map(|c| c.trim()), Some(root.pem().trim()));
    WorkloadCert::from_pem(&chain, &csr.key_pem, &root.pem())
        .expect("chains to the plugged-in root");
}

#[test]
fn missing_ca_files_name_the_path() {
    let source = CaSource::Files {
        cert_chain: "/nonexistent/ca.pem".into(),
        key: "/nonexistent/key.pem".into(),
    };
    let err = load_ca(&source, "cluster.local").unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}
