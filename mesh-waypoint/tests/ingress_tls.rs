//! The HTTPS ingress listener in-process: a feed-mode waypoint whose configuration (routes and
//! `tls_credentials`) comes from an in-process `WaypointFeed`, a plain backend on loopback, and
//! a tokio-rustls client that trusts only the test root.

mod mesh;
mod support;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::{FakeFeed, WAIT};
use mesh_core::{
    control::{ControlConnection, ControlEndpoint},
    drain::DrainTrigger,
    proto::control::v1 as pb,
};
use mesh_waypoint::{
    app::{self, AppConfig, Bound},
    config::WaypointConfig,
    feed::FeedClientConfig,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

const HOST: &str = "shop.example.com";
const WEB: &str = "web.app.svc.cluster.local";

/// A test root and leaf certificates it signs.
struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let root = CertifiedIssuer::self_signed(params, key).expect("root");
        Self { root }
    }

    /// A credential for `hosts` whose certificate names `hosts` (secret name `name`).
    fn credential(&self, name: &str, hosts: &[&str]) -> pb::TlsCredential {
        let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let params = CertificateParams::new(names.clone()).expect("params");
        let key = KeyPair::generate().expect("key");
        let leaf = params.signed_by(&key, &self.root).expect("leaf");
        pb::TlsCredential {
            hosts: names,
            cert_chain_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
            name: name.to_owned(),
        }
    }

    /// A client trusting the test root, offering `alpn`.
    fn client_with(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.der().clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    fn client(&self) -> TlsConnector {
        self.client_with(&[b"h2", b"http/1.1"])
    }
}

/// Version `version`: the ingress route `HOST` -> service web (the backend) and `credentials`.
fn config(
    version: u64,
    backend: SocketAddr,
    credentials: Vec<pb::TlsCredential>,
) -> pb::WaypointConfig {
    let service = pb::Service {
        key: format!("app/{WEB}"),
        name: "web".into(),
        namespace: "app".into(),
        hostname: WEB.into(),
        vips: vec![vec![10, 96, 0, 10]],
        ports: vec![pb::ServicePort {
            port: 80,
            target_port: u32::from(backend.port()),
            protocol: "http".into(),
        }],
        endpoints: vec![pb::Endpoint {
            workload_uid: "app/web-1".into(),
            ports: BTreeMap::new(),
        }],
        ..Default::default()
    };
    let backend_ref = pb::Backend {
        host: WEB.into(),
        port: 80,
        weight: 1,
        subset: String::new(),
    };
    pb::WaypointConfig {
        feed_id: "feed-1".into(),
        version,
        services: vec![service],
        workloads: vec![pb::Workload {
            uid: "app/web-1".into(),
            addresses: vec![vec![127, 0, 0, 1]],
            identity: "spiffe://cluster.local/ns/app/sa/web".into(),
            ..Default::default()
        }],
        routes: vec![pb::Route {
            key: "VirtualService/app/shop".into(),
            hosts: vec![HOST.into()],
            port: 0,
            rules: vec![pb::RouteRule {
                backends: vec![backend_ref],
                ..Default::default()
            }],
        }],
        tls_credentials: credentials,
        ..Default::default()
    }
}

struct Gateway {
    feed: FakeFeed,
    waypoint: Bound,
    _control: DrainTrigger,
}

impl Gateway {
    async fn start(first: pb::WaypointConfig) -> Self {
        let feed = FakeFeed::default();
        let (url, control) = feed.serve().await;
        let endpoint = ControlEndpoint::new(&url, None).expect("control address");
        let connection = ControlConnection::new(endpoint);
        let mut app = AppConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            WaypointConfig::default(),
        );
        app.listen = None;
        app.metrics = Some("127.0.0.1:0".parse().expect("addr"));
        app.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
        app.feed = Some(FeedClientConfig::new(connection, "edge", "public"));
        let waypoint = app::build(app).await.expect("waypoint starts");
        feed.wait_subscriptions(1).await;
        let gateway = Self {
            feed,
            waypoint,
            _control: control,
        };
        gateway.push(first).await;
        gateway
    }

    async fn push(&self, config: pb::WaypointConfig) {
        let version = config.version;
        self.feed.push(config).await;
        let mut status = self.waypoint.feed_status.clone().expect("feed mode");
        tokio::time::timeout(WAIT, status.wait_for(|s| s.version == version))
            .await
            .expect("version applied in time")
            .expect("feed client alive");
    }

    /// A TLS connection with SNI `sni`: the server's leaf certificate (DER) and the stream.
    async fn connect(
        &self,
        client: &TlsConnector,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let addr = self.waypoint.tls_addr.expect("https listener");
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_owned()).expect("server name");
        tokio::time::timeout(WAIT, client.connect(name, tcp))
            .await
            .expect("handshake in time")
    }
}

fn leaf_der(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate");
    certs[0].to_vec()
}

/// GET `path` with `Host: HOST` on an established TLS stream, over the negotiated protocol. The
/// client claims `x-forwarded-proto: http`; a request the backend answers must arrive with
/// `https`, the scheme the client really used.
async fn get(tls: TlsStream<TcpStream>, path: &str) -> (StatusCode, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = http::Request::get(format!("https://{HOST}{path}"))
        .header("host", HOST)
        .header("x-forwarded-proto", "http")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        tokio::time::timeout(WAIT, send.send_request(request)).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http/1.1 handshake");
        tokio::spawn(conn);
        tokio::time::timeout(WAIT, send.send_request(request)).await
    };
    let response = response.expect("answer in time").expect("answer");
    let status = response.status();
    if let Some(seen) = response.headers().get("echo-x-forwarded-proto") {
        assert_eq!(seen, "https", "x-forwarded-proto at the backend");
    } else {
        assert_ne!(
            status,
            StatusCode::OK,
            "a backend answer echoes its headers"
        );
    }
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_request_with_sni_reaches_the_backend() {
    let backend = support::backend("web").await;
    let pki = Pki::new();
    let first = pki.credential("edge/shop-cert", &[HOST]);
    let gateway = Gateway::start(config(1, backend, vec![first.clone()])).await;
    let client = pki.client();
    let tls = gateway.connect(&client, HOST).await.expect("handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "h2 preferred"
    );
    let expected = (StatusCode::OK, "web /cart".to_owned());
    assert_eq!(get(tls, "/cart").await, expected, "over h2");
    let http1 = pki.client_with(&[b"http/1.1"]);
    let tls = gateway.connect(&http1, HOST).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get(tls, "/cart").await, expected, "over http/1.1");
}

#[tokio::test]
async fn unknown_sni_fails_the_handshake() {
    let backend = support::backend("web").await;
    let pki = Pki::new();
    let gateway = Gateway::start(config(
        1,
        backend,
        vec![pki.credential("edge/shop-cert", &[HOST])],
    ))
    .await;
    let client = pki.client();
    let refused = gateway.connect(&client, "other.example.com").await;
    assert!(refused.is_err(), "no certificate for an unknown name");
    // An IP address as server name: the client sends no SNI.
    let refused = gateway.connect(&client, "127.0.0.1").await;
    assert!(refused.is_err(), "no certificate without sni");
    let metrics = gateway.waypoint.metrics_addr.expect("metrics");
    let (_, text) = mesh::plain_get(metrics, "localhost", "/metrics").await;
    for reason in ["unknown_sni", "no_sni"] {
        let line = format!("weft_waypoint_tls_handshake_failures_total{{reason=\"{reason}\"}} 1");
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[tokio::test]
async fn a_new_version_brings_a_new_certificate_to_the_next_connection() {
    let backend = support::backend("web").await;
    let pki = Pki::new();
    let first = pki.credential("edge/shop-cert", &[HOST]);
    let gateway = Gateway::start(config(1, backend, vec![first.clone()])).await;
    let client = pki.client();
    let before = leaf_der(&gateway.connect(&client, HOST).await.expect("v1 handshake"));
    let second = pki.credential("edge/shop-cert", &[HOST, "*.example.org"]);
    assert_ne!(first.cert_chain_pem, second.cert_chain_pem);
    gateway.push(config(2, backend, vec![second])).await;
    let after = leaf_der(&gateway.connect(&client, HOST).await.expect("v2 handshake"));
    assert_ne!(
        before, after,
        "the next connection gets the new certificate"
    );
    let wildcard = gateway
        .connect(&client, "www.example.org")
        .await
        .expect("wildcard");
    assert_eq!(leaf_der(&wildcard), after);
    gateway.push(config(3, backend, Vec::new())).await;
    assert!(
        gateway.connect(&client, HOST).await.is_err(),
        "credential withdrawn"
    );
}

#[tokio::test]
async fn policy_sees_the_tls_server_name() {
    const ADMIN: &str = "admin.example.com";
    let backend = support::backend("web").await;
    let pki = Pki::new();
    let mut wire = config(
        1,
        backend,
        vec![pki.credential("edge/certs", &[HOST, ADMIN])],
    );
    // DENY on the gateway for connections that asked for the admin name.
    wire.policies = vec![pb::Authorization {
        key: "edge/no-admin-sni".into(),
        targets: vec![pb::PolicyTarget {
            kind: "Gateway".into(),
            namespace: "edge".into(),
            name: "public".into(),
        }],
        action: pb::PolicyAction::Deny as i32,
        rules: vec![pb::Rule {
            when: vec![pb::Condition {
                key: "connection.sni".into(),
                values: vec!["admin.*".into()],
                not_values: vec![],
            }],
            ..Default::default()
        }],
        ..Default::default()
    }];
    let gateway = Gateway::start(wire).await;
    let client = pki.client();
    let tls = gateway.connect(&client, HOST).await.expect("handshake");
    assert_eq!(get(tls, "/cart").await.0, StatusCode::OK);
    // Same Host header, other server name: denied by the name the connection was made for.
    let tls = gateway.connect(&client, ADMIN).await.expect("handshake");
    assert_eq!(get(tls, "/cart").await.0, StatusCode::FORBIDDEN);
}
