//! In-process tunnel tests: two node tunnels on loopback with a test CA and a fake redirect.

mod tunnel_support;

use std::{sync::Arc, time::Duration};

use mesh_core::proto::control::v1 as pb;
use mesh_core::{drain::DrainOutcome, identity::SpiffeId};
use mesh_node::feed::MeshSnapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_to_pod_and_service_vip_through_two_tunnels() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let mut direct = mesh.connect(mesh.db).await;
    round_trip(&mut direct, b"hello db").await.unwrap();
    let mut via_vip = mesh.connect(mesh.vip).await;
    round_trip(&mut via_vip, &vec![42u8; 256 * 1024])
        .await
        .unwrap();
    // Half-close travels end to end: the echo pod sees EOF and closes its side.
    direct.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, direct.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let metrics = mesh.b.metrics().encode();
    assert!(metrics.contains("istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"frontend-0\""), "{metrics}");
    assert!(
        metrics.contains("source_principal=\"spiffe://cluster.local/ns/web/sa/frontend\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("destination_principal=\"spiffe://cluster.local/ns/data/sa/db\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connection_is_reused_across_app_connections() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    for i in 0..5u8 {
        let mut stream = mesh.connect(mesh.db).await;
        round_trip(&mut stream, &[i; 64]).await.unwrap();
    }
    assert_eq!(mesh.a.client().pooled_connections(), 1);
    // A different destination identity needs its own connection.
    let mut cache = mesh.connect(mesh.cache).await;
    round_trip(&mut cache, b"cache").await.unwrap();
    assert_eq!(mesh.a.client().pooled_connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_trust_domain_is_refused() {
    let mesh = Mesh::start(MeshOptions {
        node_a_trust_domain: "evil.local",
        ..MeshOptions::default()
    })
    .await;
    let mut stream = mesh.connect(mesh.db).await;
    expect_closed(&mut stream).await;
    let failed = mesh.a.metrics().encode();
    assert!(
        failed.contains("istio_tcp_connections_failed_total{reporter=\"source\""),
        "{failed}"
    );
    assert!(!mesh
        .b
        .metrics()
        .encode()
        .contains("istio_tcp_connections_opened_total{"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate_is_refused() {
    let ca = Arc::new(TestCa::new());
    let options = MeshOptions {
        node_a_source: Some(Arc::new(ExpiredSource(ca.clone()))),
        ..MeshOptions::default()
    };
    // Node b must trust the same root as the expired certs: share the CA.
    let mesh = Mesh::start_with_ca(options, ca).await;
    let mut stream = mesh.connect(mesh.db).await;
    expect_closed(&mut stream).await;
    assert!(!mesh
        .b
        .metrics()
        .encode()
        .contains("istio_tcp_connections_opened_total{"));
    let a = mesh.a.metrics().encode();
    assert!(
        a.contains("istio_tcp_connections_failed_total{reporter=\"source\""),
        "{a}"
    );
}

/// A DENY for namespace `web`, selecting the `db` workload only.
fn deny_web_to_db() -> mesh_node::policy::Policies {
    tunnel_support::policies(
        "
- key: data/no-web
  namespace: data
  scope: POLICY_SCOPE_WORKLOAD_SELECTOR
  action: POLICY_ACTION_DENY
  rules: [{ from: [{ namespaces: [web] }] }]
",
        &[("data/no-web", "data/db-0")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denies_at_destination_with_401() {
    let mesh = Mesh::start(MeshOptions {
        node_b_policies: deny_web_to_db(),
        ..MeshOptions::default()
    })
    .await;
    let mut denied = mesh.connect(mesh.db).await;
    expect_closed(&mut denied).await;
    // The selector limits the policy to db: cache stays reachable.
    let mut cache = mesh.connect(mesh.cache).await;
    round_trip(&mut cache, b"allowed").await.unwrap();
    let a = mesh.a.metrics().encode();
    assert!(
        a.contains(
            "istio_tcp_connections_failed_total{reporter=\"source\",source_workload=\"frontend-0\""
        ),
        "{a}"
    );
    let b = mesh.b.metrics().encode();
    assert!(
        b.contains("istio_tcp_connections_failed_total{reporter=\"destination\""),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_closes_live_connections() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let mut stream = mesh.connect(mesh.db).await;
    round_trip(&mut stream, b"before").await.unwrap();
    let update = tunnel_support::policies(
        "[{key: data/no-web, namespace: data, scope: POLICY_SCOPE_NAMESPACE,
           action: POLICY_ACTION_DENY, rules: [{from: [{namespaces: [web]}]}]}]",
        &[],
    );
    assert_eq!(mesh.b.update_policies(update), 1);
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let mut again = mesh.connect(mesh.db).await;
    expect_closed(&mut again).await;
}

/// What mesh-control feeds for a STRICT PeerAuthentication in namespace data.
fn data_strict(snapshot: &mut MeshSnapshot) {
    for workload in snapshot.workloads.values_mut() {
        if workload.namespace == "data" {
            workload.mtls = pb::MtlsMode::Strict as i32;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_honours_peer_authentication() {
    let mesh = Mesh::start(MeshOptions {
        edit: Some(Box::new(data_strict)),
        ..MeshOptions::default()
    })
    .await;
    let outsider = "127.0.0.99".parse().unwrap();
    let mut refused = mesh.net.plaintext_connect(outsider, mesh.db).await.unwrap();
    expect_closed(&mut refused).await;
    let permissive = Mesh::start(MeshOptions::default()).await;
    let mut accepted = permissive
        .net
        .plaintext_connect(outsider, permissive.db)
        .await
        .unwrap();
    round_trip(&mut accepted, b"plain").await.unwrap();
    // The tunnel's own ports are never dialled for a plaintext client (in a pod, 15006 would
    // be the tunnel's plaintext listener again: a loop).
    for port in [15006, 15008, 15020] {
        let reserved = std::net::SocketAddr::new(permissive.db.ip(), port);
        let mut refused = permissive
            .net
            .plaintext_connect(outsider, reserved)
            .await
            .unwrap();
        expect_closed(&mut refused).await;
    }
    let metrics = permissive.b.metrics().encode();
    assert!(
        metrics.contains("connection_security_policy=\"none\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_honours_workload_and_port_modes() {
    let mesh = Mesh::start(MeshOptions {
        edit: Some(Box::new(data_strict)),
        ..MeshOptions::default()
    })
    .await;
    // db-0 opens its serving port to plaintext; cache-0 keeps STRICT.
    let db_port = u32::from(mesh.db.port());
    let state = mesh.state("node-b", |s| {
        data_strict(s);
        let db = s.workloads.get_mut("data/db-0").unwrap();
        db.port_mtls
            .insert(db_port, pb::MtlsMode::Permissive as i32);
    });
    mesh.b.update_mesh(state, Default::default()).await;
    let outsider = "127.0.0.99".parse().unwrap();
    let mut accepted = mesh.net.plaintext_connect(outsider, mesh.db).await.unwrap();
    round_trip(&mut accepted, b"port permissive").await.unwrap();
    let mut refused = mesh
        .net
        .plaintext_connect(outsider, mesh.cache)
        .await
        .unwrap();
    expect_closed(&mut refused).await;
    // Each workload has its own mode: db-0 STRICT, cache-0 PERMISSIVE.
    let state = mesh.state("node-b", |s| {
        let db = s.workloads.get_mut("data/db-0").unwrap();
        db.mtls = pb::MtlsMode::Strict as i32;
    });
    mesh.b.update_mesh(state, Default::default()).await;
    let mut refused = mesh.net.plaintext_connect(outsider, mesh.db).await.unwrap();
    expect_closed(&mut refused).await;
    let mut accepted = mesh
        .net
        .plaintext_connect(outsider, mesh.cache)
        .await
        .unwrap();
    round_trip(&mut accepted, b"cache permissive")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_keeps_traffic_flowing() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let db_id: SpiffeId = "spiffe://cluster.local/ns/data/sa/db".parse().unwrap();
    let before = mesh.b.certificate(&db_id).unwrap().leaf().unwrap();
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(mesh.connect(mesh.db).await);
    }
    let load = tokio::spawn(async move {
        for round in 0..50u32 {
            for stream in streams.iter_mut() {
                round_trip(stream, &round.to_be_bytes()).await.unwrap();
            }
        }
        streams
    });
    for _ in 0..3 {
        mesh.b.renew_certificates().await.unwrap();
        mesh.a.renew_certificates().await.unwrap();
    }
    let streams = tokio::time::timeout(WAIT, load).await.unwrap().unwrap();
    assert_eq!(streams.len(), 8);
    let after = mesh.b.certificate(&db_id).unwrap().leaf().unwrap();
    assert_ne!(after, before, "certificate was not rotated");
    // New connections after rotation work too.
    let mut fresh = mesh.connect(mesh.db).await;
    round_trip(&mut fresh, b"after rotation").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_and_drain() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let (status, _) = http_get(mesh.b.readiness, "/healthz/ready").await;
    assert_eq!(status, 200);
    let mut stream = mesh.connect(mesh.db).await;
    round_trip(&mut stream, b"x").await.unwrap();
    let (status, body) = http_get(mesh.b.metrics, "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("istio_tcp_connections_opened_total"),
        "{body}"
    );
    let (status, body) = http_get(mesh.b.admin, "/config_dump").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("spiffe://cluster.local/ns/data/sa/db"),
        "{body}"
    );
    assert_eq!(http_get(mesh.b.admin, "/nope").await.0, 404);
    // Drain node a while a connection is open: it keeps working until the app closes it.
    let readiness = mesh.a.readiness;
    let drain = tokio::spawn(mesh.a.shutdown());
    assert_eq!(http_get(readiness, "/healthz/ready").await.0, 503);
    round_trip(&mut stream, b"during drain").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    drop(stream);
    let outcome = tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Complete);
}
