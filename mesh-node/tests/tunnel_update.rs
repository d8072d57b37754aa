//! Updating the mesh view of running tunnels: a new workload becomes reachable over HBONE once
//! both nodes know it, with a certificate fetched for it before any traffic is routed.

mod tunnel_support;

use mesh_core::identity::SpiffeId;
use mesh_node::feed::{convert, MeshSnapshot};
use tunnel_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_workload_is_tunnelled_after_update() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let fresh = echo_pod("127.0.0.22").await;
    mesh.net.add_pod(fresh.ip(), "node-b");
    let new_id: SpiffeId = "spiffe://cluster.local/ns/data/sa/fresh".parse().unwrap();
    assert!(mesh.b.certificate(&new_id).is_none());
    // Unknown to the mesh: node a passes it through untouched, node b never sees it.
    let mut outside = mesh.connect(fresh).await;
    round_trip(&mut outside, b"passthrough").await.unwrap();
    let b_metrics = mesh.b.metrics().encode();
    assert!(
        !b_metrics.contains("destination_workload=\"fresh-0\""),
        "{b_metrics}"
    );

    let add_fresh = |s: &mut MeshSnapshot| {
        s.insert_workload(pod("data", "fresh-0", "fresh", "127.0.0.22", "node-b"))
    };
    assert_eq!(
        mesh.b
            .update_mesh(mesh.state("node-b", add_fresh), Default::default())
            .await,
        0
    );
    assert!(
        mesh.b.certificate(&new_id).is_some(),
        "certificate fetched on update"
    );
    mesh.a
        .update_mesh(mesh.state("node-a", add_fresh), Default::default())
        .await;

    let mut tunnelled = mesh.connect(fresh).await;
    round_trip(&mut tunnelled, b"through hbone").await.unwrap();
    let b_metrics = mesh.b.metrics().encode();
    assert!(
        b_metrics.contains("destination_workload=\"fresh-0\""),
        "{b_metrics}"
    );
    let (status, dump) = http_get(mesh.b.admin, "/config_dump").await;
    assert_eq!(status, 200);
    assert!(
        dump.contains("spiffe://cluster.local/ns/data/sa/fresh"),
        "{dump}"
    );
    // A pod claiming the same address is left out, with a warning; the rest of the update
    // applies and the address stays with the first claim.
    let mut snapshot = mesh.snapshot();
    add_fresh(&mut snapshot);
    snapshot.insert_workload(pod("data", "zz-dup", "x", "127.0.0.22", "node-b"));
    let settings = node_settings("node-a", "cluster.local");
    let converted = convert::mesh(&settings, &snapshot);
    assert!(
        converted
            .warnings
            .iter()
            .any(|w| w.contains("zz-dup") && w.contains("left out")),
        "{:?}",
        converted.warnings
    );
    mesh.a
        .update_mesh(converted.state, Default::default())
        .await;
    let mut still = mesh.connect(fresh).await;
    round_trip(&mut still, b"still tunnelled").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_no_local_pod_has_is_retired() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let fresh = echo_pod("127.0.0.23").await;
    mesh.net.add_pod(fresh.ip(), "node-b");
    let id: SpiffeId = "spiffe://cluster.local/ns/data/sa/brief".parse().unwrap();
    let add_brief = |s: &mut MeshSnapshot| {
        s.insert_workload(pod("data", "brief-0", "brief", "127.0.0.23", "node-b"))
    };
    mesh.b
        .update_mesh(mesh.state("node-b", add_brief), Default::default())
        .await;
    assert!(mesh.b.certificate(&id).is_some());
    // The pod leaves: its identity is neither presented nor renewed any more.
    mesh.b
        .update_mesh(mesh.state("node-b", |_| {}), Default::default())
        .await;
    assert!(
        mesh.b.certificate(&id).is_none(),
        "certificate kept for a departed pod"
    );
    assert!(
        mesh.b.renew_certificates().await.is_ok(),
        "renewal skips retired identities"
    );
}
