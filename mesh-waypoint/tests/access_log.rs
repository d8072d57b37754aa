//! The access-log event, in its own test binary: `tracing` caches callsite interest
//! process-wide, so a thread-scoped subscriber can miss events while other tests run
//! concurrently. Alone here, the subscriber is installed globally before any event.

mod support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use http::StatusCode;
use support::*;

const CONFIG: &str = r#"
destinations:
  - name: reviews
    endpoints: [{address: "{a}", labels: {version: v1}}]
    subsets: [{name: v1, labels: {version: v1}}]
routes:
  - name: reviews
    hosts: [reviews]
    rules: [{name: all, route: [{destination: reviews, subset: v1}]}]
"#;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn one_access_log_event_per_request() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("access_log=info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("only test in this binary");
    let bound = waypoint(CONFIG, &[backend("v1").await]).await;
    let (status, _, _) = send(
        &http1(),
        get(
            bound.proxy_addr.expect("plain listener"),
            "reviews",
            "/logged?secret=1",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        &http1(),
        get(bound.proxy_addr.expect("plain listener"), "nowhere", "/x"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The event is emitted when the proxy drops the finished response body, which can happen
    // just after the client has read it: let the proxy's tasks run until both events are in.
    let access_lines = || {
        let bytes = capture.0.lock().map(|b| b.clone()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        text.lines()
            .filter(|l| l.contains("access_log"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    tokio::time::timeout(WAIT, async {
        while access_lines().len() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("two access log events");
    let lines = access_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for needle in [
        "path=/logged",
        "status=200",
        "route=\"reviews/all\"",
        "destination=reviews",
        "subset=\"v1\"",
        "flags=\"-\"",
        "response_bytes=19",
    ] {
        assert!(lines[0].contains(needle), "{needle} in {}", lines[0]);
    }
    assert!(!lines[0].contains("secret"), "query strings are not logged");
    assert!(
        lines[1].contains("status=404") && lines[1].contains("flags=\"NR\""),
        "{}",
        lines[1]
    );
}
