//! The access log: one event per connection per reporting side, with the fields operators need.

mod tunnel_support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_support::*;

// The only test in this binary: it installs the process-wide subscriber, so no other test's
// threads can race on callsite interest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_log_event_per_connection_and_side() {
    let captured = Captured::install_global();
    let mesh = Mesh::start(MeshOptions::default()).await;
    let mut stream = mesh.connect(mesh.db).await;
    round_trip(&mut stream, b"0123456789").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while captured.access_lines().len() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("access events missing: {}", captured.text()));
    let lines = captured.access_lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    // Each side logs when its half of the connection ends: in either order.
    for reporter in ["Destination", "Source"] {
        let tag = format!("reporter={reporter}");
        let line = lines
            .iter()
            .find(|l| l.contains(&tag))
            .unwrap_or_else(|| panic!("no {tag} line: {lines:#?}"));
        assert!(line.contains("src.workload=frontend-0"), "{line}");
        assert!(
            line.contains("src.identity=spiffe://cluster.local/ns/web/sa/frontend"),
            "{line}"
        );
        assert!(line.contains("dst.workload=db-0"), "{line}");
        assert!(
            line.contains("dst.identity=spiffe://cluster.local/ns/data/sa/db"),
            "{line}"
        );
        assert!(
            line.contains("bytes_sent=10") && line.contains("bytes_received=10"),
            "{line}"
        );
        assert!(line.contains("result=completed"), "{line}");
        assert!(line.contains("duration_ms="), "{line}");
    }
}
