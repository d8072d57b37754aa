//! The access log: one event per connection per reporting side, with the fields operators need.

mod tunnel_support;

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_support::*;

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn access_lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains("connection complete"))
            .map(str::to_owned)
            .collect()
    }
}

// The only test in this binary: it installs the process-wide subscriber, so no other test's
// threads can race on callsite interest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_log_event_per_connection_and_side() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_env_filter("access=info")
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
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
    .unwrap_or_else(|_| {
        panic!(
            "access events missing: {}",
            String::from_utf8_lossy(&captured.0.lock().unwrap())
        )
    });
    let lines = captured.access_lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for (line, reporter) in lines.iter().zip(["Destination", "Source"]) {
        assert!(line.contains(&format!("reporter={reporter}")), "{line}");
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
