//! Feed mode end to end on loopback: a source HBONE client -> the waypoint's HBONE front end ->
//! node-inbound HBONE stand-ins, with the configuration delivered by an in-process
//! `WaypointFeed` and certificates from a test CA.

mod mesh;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use mesh::{id, node_inbound, FakeFeed, Pki, Source, WAIT};
use mesh_core::{
    control::{ControlConnection, ControlEndpoint},
    identity::{
        ca::CertificateAuthority, cert::generate_csr, grpc::BearerToken, source::DEFAULT_VALIDITY,
        WorkloadCert,
    },
    proto::control::v1 as pb,
    tls::IdentityCert,
};
use mesh_waypoint::{
    app::{self, AppConfig, Bound, HboneConfig},
    config::WaypointConfig,
    feed::{FeedClientConfig, WaypointName},
};

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const VIP: &str = "10.96.0.1:9080";

fn workload(uid: &str, ip: [u8; 4], version: &str) -> pb::Workload {
    pb::Workload {
        uid: uid.into(),
        addresses: vec![ip.to_vec()],
        identity: id(uid).to_string(),
        labels: BTreeMap::from([("version".to_owned(), version.to_owned())]),
        ..Default::default()
    }
}

fn backend(subset: &str, weight: u32) -> pb::Backend {
    pb::Backend {
        host: REVIEWS.into(),
        port: 0,
        weight,
        subset: subset.into(),
    }
}

fn rule(matches: Vec<pb::RouteMatch>, backends: Vec<pb::Backend>) -> pb::RouteRule {
    pb::RouteRule {
        matches,
        backends,
        ..Default::default()
    }
}

fn prefix(p: &str) -> Option<pb::StringMatch> {
    Some(pb::StringMatch {
        kind: Some(pb::string_match::Kind::Prefix(p.into())),
    })
}

fn routes() -> Vec<pb::RouteRule> {
    let fault = pb::RouteRule {
        fault: Some(pb::Fault {
            delay: None,
            abort: Some(pb::AbortFault {
                percentage: 100.0,
                http_status: 418,
            }),
        }),
        ..rule(
            vec![pb::RouteMatch {
                path: prefix("/fault"),
                ..Default::default()
            }],
            vec![],
        )
    };
    let header = pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            name: "x-version".into(),
            value: Some(pb::StringMatch {
                kind: Some(pb::string_match::Kind::Exact("v1".into())),
            }),
            invert: false,
        }],
        ..Default::default()
    };
    vec![
        fault,
        rule(vec![header], vec![backend("v1", 100)]),
        rule(vec![], vec![backend("v1", 50), backend("v2", 50)]),
    ]
}

fn deny_bad() -> pb::Authorization {
    pb::Authorization {
        key: "default/deny-bad".into(),
        targets: vec![pb::PolicyTarget {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "reviews".into(),
        }],
        action: pb::PolicyAction::Deny as i32,
        rules: vec![pb::Rule {
            from: vec![pb::SourceMatch {
                principals: vec!["cluster.local/ns/default/sa/bad".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn config(version: u64, rules: Vec<pb::RouteRule>) -> pb::WaypointConfig {
    let labels = |v: &str| pb::Labels {
        labels: BTreeMap::from([("version".to_owned(), v.to_owned())]),
    };
    let endpoint = |uid: &str| pb::Endpoint {
        workload_uid: uid.into(),
        ports: BTreeMap::new(),
    };
    pb::WaypointConfig {
        feed_id: "feed-1".into(),
        version,
        services: vec![pb::Service {
            key: format!("default/{REVIEWS}"),
            name: "reviews".into(),
            namespace: "default".into(),
            hostname: REVIEWS.into(),
            vips: vec![vec![10, 96, 0, 1]],
            ports: vec![pb::ServicePort {
                port: 9080,
                target_port: 9080,
                protocol: "http".into(),
            }],
            endpoints: vec![endpoint("reviews-v1"), endpoint("reviews-v2")],
            waypoint: Some(pb::WaypointRef {
                namespace: "default".into(),
                name: "waypoint".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        workloads: vec![
            workload("reviews-v1", [127, 0, 0, 2], "v1"),
            workload("reviews-v2", [127, 0, 0, 3], "v2"),
        ],
        routes: vec![pb::Route {
            key: "HTTPRoute/default/reviews".into(),
            hosts: vec![REVIEWS.into()],
            port: 0,
            rules,
        }],
        policies: vec![deny_bad()],
        traffic_policies: vec![pb::TrafficPolicy {
            key: "DestinationRule/default/reviews".into(),
            host: REVIEWS.into(),
            subsets: BTreeMap::from([
                ("v1".to_owned(), labels("v1")),
                ("v2".to_owned(), labels("v2")),
            ]),
            ..Default::default()
        }],
        tls_credentials: Vec::new(),
        path_normalization: 0,
        request_authentications: Vec::new(),
    }
}

struct Mesh {
    pki: Pki,
    feed: FakeFeed,
    waypoint: Bound,
    _control: mesh_core::drain::DrainTrigger,
}

impl Mesh {
    async fn start() -> Self {
        Self::start_with(None, config(1, routes())).await
    }

    /// Starts with a plain (ingress) listener when `plain` is set and `first` as version 1.
    async fn start_with(plain: Option<SocketAddr>, first: pb::WaypointConfig) -> Self {
        let pki = Pki::new("cluster.local");
        // Node-inbound stand-ins share one HBONE port on two loopback addresses.
        let v1 = node_inbound([127, 0, 0, 2].into(), 0, pki.cert(&id("reviews-v1")), "v1").await;
        node_inbound(
            [127, 0, 0, 3].into(),
            v1.port(),
            pki.cert(&id("reviews-v2")),
            "v2",
        )
        .await;
        let feed = FakeFeed::default();
        let (url, control) = feed.serve().await;
        let mut hbone = HboneConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            pki.cert(&id("waypoint")),
        );
        hbone.upstream_port = v1.port();
        hbone.workload = Some(WaypointName {
            namespace: "default".into(),
            name: "waypoint".into(),
        });
        let endpoint = ControlEndpoint::new(&url, None).expect("control address");
        let mut connection = ControlConnection::new(endpoint);
        connection.token = Some(BearerToken::inline("node-token").expect("token"));
        let feed_config = FeedClientConfig::new(connection, "default", "waypoint");
        let mut app = AppConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            WaypointConfig::default(),
        );
        app.listen = plain;
        app.metrics = Some("127.0.0.1:0".parse().expect("addr"));
        app.hbone = Some(hbone);
        app.feed = Some(feed_config);
        let waypoint = app::build(app).await.expect("waypoint starts");
        feed.wait_subscriptions(1).await;
        feed.push(first).await;
        let mesh = Self {
            pki,
            feed,
            waypoint,
            _control: control,
        };
        mesh.wait_version(1).await;
        mesh
    }

    async fn wait_version(&self, version: u64) {
        let mut status = self.waypoint.feed_status.clone().expect("feed mode");
        tokio::time::timeout(WAIT, status.wait_for(|s| s.version == version))
            .await
            .expect("version applied in time")
            .expect("feed client alive");
    }

    fn source(&self, sa: &str) -> Source {
        self.source_with(self.pki.cert(&id(sa)))
    }

    fn source_with(&self, cert: Arc<IdentityCert>) -> Source {
        Source::new(
            cert,
            self.waypoint.hbone_addr.expect("hbone"),
            id("waypoint"),
        )
    }
}

fn vip() -> SocketAddr {
    VIP.parse().expect("vip")
}

#[tokio::test]
async fn routes_by_weight_header_fault_and_policy_over_hbone() {
    let mesh = Mesh::start().await;
    let request = mesh.feed.requests.lock().expect("lock")[0].clone();
    assert_eq!(
        (request.0.namespace.as_str(), request.0.name.as_str()),
        ("default", "waypoint")
    );
    assert_eq!(request.1.as_deref(), Some("Bearer node-token"));

    let source = mesh.source("productpage");
    let mut seen = BTreeMap::new();
    for _ in 0..64 {
        let (status, headers, body) = source.get(vip(), "/x", &[]).await.expect("request");
        assert_eq!(status, 200, "{body}");
        // The waypoint reached the endpoint over HBONE with its own identity.
        assert_eq!(headers["x-peer"], id("waypoint").to_string().as_str());
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["v1 /x", "v2 /x"],
        "50/50 split hits both subsets: {seen:?}"
    );

    for _ in 0..8 {
        let (status, headers, body) = source
            .get(vip(), "/h", &[("x-version", "v1")])
            .await
            .expect("request");
        assert_eq!((status.as_u16(), body.as_str()), (200, "v1 /h"));
        assert_eq!(headers["x-authority"], "127.0.0.2:9080");
    }

    let (status, _, _) = source.get(vip(), "/fault/a", &[]).await.expect("request");
    assert_eq!(status, 418, "abort fault");

    let (status, _, _) = mesh
        .source("bad")
        .get(vip(), "/x", &[])
        .await
        .expect("request");
    assert_eq!(status, 403, "deny policy on the peer principal");

    let refused = source
        .get("10.96.0.9:9080".parse().expect("addr"), "/x", &[])
        .await
        .expect_err("an authority that is no bound service is refused at connect");
    assert!(refused.contains("(400)"), "{refused}");
}

#[tokio::test]
async fn upstream_connect_names_the_client_and_the_waypoint() {
    let mesh = Mesh::start().await;
    // Two clients, interleaved, each dialling from its own address (as a node dials from inside
    // each client pod) and each lying in its own `forwarded`: pooled upstream tunnels are never
    // shared between them, and each request arrives on a tunnel whose `forwarded` names its own
    // client's real address, never the claim.
    let clients = ["127.1.2.3", "127.9.8.7"];
    for round in 0..3 {
        for client in clients {
            let mut source = mesh.source("productpage");
            source.from = Some(client.parse().expect("addr"));
            source.forwarded = Some("10.66.6.6:1".parse().expect("addr"));
            let (status, headers, body) = source
                .get(vip(), "/h", &[("x-version", "v1")])
                .await
                .expect("request");
            assert_eq!(status, 200, "{body}");
            let forwarded = headers["x-connect-forwarded"].to_str().expect("ascii");
            assert!(
                forwarded.starts_with(&format!("for=\"{client}:")),
                "round {round}: {forwarded}"
            );
            let baggage = headers["x-connect-baggage"].to_str().expect("ascii");
            for pair in [
                "k8s.namespace.name=default",
                "k8s.deployment.name=waypoint",
                "service.name=waypoint",
            ] {
                assert!(baggage.split(',').any(|p| p == pair), "{pair} in {baggage}");
            }
        }
    }
}

/// The waypoint's `/metrics` text.
async fn scrape(waypoint: &Bound) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = waypoint.metrics_addr.expect("metrics listener");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    text
}

/// Request metrics carry the source workload the node named in the CONNECT `baggage`, beside
/// the verified principal.
#[tokio::test]
async fn request_metrics_name_the_source_workload() {
    let mesh = Mesh::start().await;
    let (status, _, body) = mesh
        .source("productpage")
        .get(vip(), "/h", &[("x-version", "v1")])
        .await
        .expect("request");
    assert_eq!(status, 200, "{body}");
    let wanted = [
        "source_principal=\"spiffe://cluster.local/ns/default/sa/productpage\"",
        "source_workload=\"productpage\"",
        "source_workload_namespace=\"default\"",
        "source_canonical_service=\"productpage\"",
        "source_canonical_revision=\"v1\"",
    ];
    // A request is recorded when its response body is dropped, a moment after the client read.
    let recorded = tokio::time::timeout(WAIT, async {
        loop {
            let text = scrape(&mesh.waypoint).await;
            let found = text.lines().any(|line| {
                line.starts_with("istio_requests_total{") && wanted.iter().all(|w| line.contains(w))
            });
            if found {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
    recorded
        .await
        .expect("a request line with the source's labels");
}

#[tokio::test]
async fn new_feed_versions_swap_in_and_survive_control_loss() {
    let mesh = Mesh::start().await;
    let source = mesh.source("productpage");
    let slow_cert = mesh.pki.cert(&id("productpage"));
    let hbone_addr = mesh.waypoint.hbone_addr.expect("hbone");
    let direct = pb::RouteRule {
        direct_response: Some(pb::DirectResponse {
            status: 200,
            body: "version two".into(),
        }),
        ..Default::default()
    };
    // A request in flight on version 1 survives the swap to version 2.
    let slow = tokio::spawn(async move {
        let source = mesh::Source::new(slow_cert, hbone_addr, id("waypoint"));
        source.get(vip(), "/slow", &[]).await
    });
    tokio::time::timeout(WAIT, mesh::gate().arrived.notified())
        .await
        .expect("slow request reached a backend");
    mesh.feed.push(config(2, vec![direct])).await;
    mesh.wait_version(2).await;
    let (_, _, body) = source.get(vip(), "/x", &[]).await.expect("request");
    assert_eq!(body, "version two");
    mesh::gate().release.notify_one();
    let (status, _, body) = tokio::time::timeout(WAIT, slow)
        .await
        .expect("slow request finished")
        .expect("task")
        .expect("request");
    assert_eq!(status, 200);
    assert!(
        body.ends_with(" /slow"),
        "served by a version-1 backend: {body}"
    );

    // Control goes away: the stream ends, the waypoint resubscribes from where it was and keeps
    // serving version 2 meanwhile.
    mesh.feed.end_streams();
    mesh.feed.wait_subscriptions(2).await;
    let resumed = mesh.feed.requests.lock().expect("lock")[1].0.clone();
    assert_eq!(
        (resumed.feed_id.as_str(), resumed.resume_version),
        ("feed-1", 2)
    );
    let (_, _, body) = source.get(vip(), "/x", &[]).await.expect("request");
    assert_eq!(body, "version two");
}

#[tokio::test]
async fn clients_from_another_trust_domain_are_refused() {
    let mesh = Mesh::start().await;
    // A client that trusts the mesh CA (so it accepts the waypoint) but whose own certificate
    // is from another trust domain and CA: only the waypoint's check can refuse it.
    let evil = CertificateAuthority::self_signed("evil.local").expect("ca");
    let evil_id = "spiffe://evil.local/ns/default/sa/productpage"
        .parse()
        .expect("id");
    let csr = generate_csr(&evil_id).expect("csr");
    let chain = evil
        .sign_csr(&csr.csr_pem, &evil_id, DEFAULT_VALIDITY)
        .expect("sign");
    let bundle = format!("{}{}", mesh.pki.bundle(), evil.trust_bundle_pem());
    let cert = WorkloadCert::from_pem(&chain, &csr.key_pem, &bundle).expect("cert");
    let outcome = mesh
        .source_with(IdentityCert::new(&cert).expect("load"))
        .get(vip(), "/x", &[])
        .await;
    assert!(
        outcome.is_err(),
        "foreign trust domain must be refused: {outcome:?}"
    );
    let (status, _, _) = mesh
        .source("productpage")
        .get(vip(), "/x", &[])
        .await
        .expect("request");
    assert_eq!(
        status, 200,
        "the same request from the mesh's trust domain works"
    );
}

#[tokio::test]
async fn ingress_routes_serve_the_plain_listener() {
    let mut wire = config(1, routes());
    wire.routes.push(pb::Route {
        key: "VirtualService/default/ingress".into(),
        hosts: vec!["bookinfo.example.com".into()],
        port: 0,
        rules: vec![rule(vec![], vec![backend("v2", 1)])],
    });
    let mesh = Mesh::start_with(Some("127.0.0.1:0".parse().expect("addr")), wire).await;
    let plain = mesh.waypoint.proxy_addr.expect("plain listener");
    let (status, body) = mesh::plain_get(plain, "bookinfo.example.com", "/p").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "v2 /p"),
        "ingress host to the v2 subset over hbone"
    );
    let (status, _) = mesh::plain_get(plain, "reviews:9080", "/p").await;
    assert_eq!(
        status, 404,
        "mesh virtual hosts are not reachable from the plain listener"
    );
    let (status, _) = mesh::plain_get(plain, VIP, "/p").await;
    assert_eq!(status, 404, "nor by vip");
}

#[tokio::test]
async fn endpoints_must_prove_their_feed_identity() {
    let mut wire = config(1, vec![rule(vec![], vec![backend("v2", 1)])]);
    // The v2 stand-in proves reviews-v2, but the feed says the pod runs as another account.
    wire.workloads[1].identity = id("someone-else").to_string();
    let mesh = Mesh::start_with(None, wire).await;
    let (status, _, body) = mesh
        .source("productpage")
        .get(vip(), "/x", &[])
        .await
        .expect("request");
    assert_eq!(
        status, 503,
        "an endpoint that cannot prove its identity is never used"
    );
    assert_eq!(body, "upstream connect failure (UF)\n");
}
