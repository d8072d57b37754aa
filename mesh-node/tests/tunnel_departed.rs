//! Connections whose local workload left the mesh are closed by the update that removed it:
//! inbound ones to a departed pod at its node, outbound ones from a departed pod at its node,
//! each with an access-log result saying why.

mod tunnel_support;

use mesh_node::feed::MeshSnapshot;
use tunnel_support::*;

// The only test in this binary: it installs the process-wide subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_close_connections_of_departed_workloads() {
    let captured = Captured::install_global();
    let mesh = Mesh::start(MeshOptions::default()).await;

    // Inbound: cache-0 leaves node b's view while a connection to it is open.
    let mut to_cache = mesh.connect(mesh.cache).await;
    round_trip(&mut to_cache, b"before").await.unwrap();
    let without_cache = |s: &mut MeshSnapshot| {
        s.workloads.remove("data/cache-0");
    };
    assert_eq!(
        mesh.b
            .update_mesh(mesh.state("node-b", without_cache), Default::default())
            .await,
        1
    );
    expect_closed(&mut to_cache).await;
    captured
        .wait_for_line(&[
            "reporter=Destination",
            "dst.workload=cache-0",
            "result=closed: destination workload cache-0 left the mesh",
        ])
        .await;
    // The client's side ends once the application closes too (TCP half-close semantics).
    drop(to_cache);
    captured
        .wait_for_line(&["reporter=Source", "dst.workload=cache-0"])
        .await;

    // Outbound: frontend-0 leaves node a's view while its connection to db is open.
    let mut to_db = mesh.connect(mesh.db).await;
    round_trip(&mut to_db, b"before").await.unwrap();
    let without_client = |s: &mut MeshSnapshot| {
        s.workloads.remove("web/frontend-0");
    };
    assert_eq!(
        mesh.a
            .update_mesh(mesh.state("node-a", without_client), Default::default())
            .await,
        1
    );
    expect_closed(&mut to_db).await;
    captured
        .wait_for_line(&[
            "reporter=Source",
            "src.workload=frontend-0",
            "result=closed: source workload frontend-0 left the mesh",
        ])
        .await;
    // Workloads still in the mesh keep their connections: nothing else was closed.
    assert_eq!(
        mesh.b
            .update_mesh(mesh.state("node-b", without_cache), Default::default())
            .await,
        0
    );
}
