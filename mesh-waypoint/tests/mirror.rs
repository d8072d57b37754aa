//! In-process mirroring tests: the copy arrives at the mirror destination with its body and a
//! `-shadow` host, and a mirror that never answers does not hold up the real response.

mod support;

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use support::*;
use tokio::{net::TcpListener, sync::mpsc};

/// A backend that reports (host, path, body) of every request and answers 200 "mirror".
async fn recorder() -> (SocketAddr, mpsc::Receiver<(String, String, Bytes)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let path = req.uri().path().to_owned();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let _ = tx.send((host, path, body)).await;
                        Ok::<_, Infallible>(Response::new(full("mirror")))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

const CONFIG: &str = r#"
destinations:
  - {name: main, endpoints: [{address: "{a}"}]}
  - {name: shadow, endpoints: [{address: "{b}"}]}
routes:
  - name: r
    hosts: [reviews]
    rules:
      - mirror: {destination: shadow, percentage: 100}
        route: [{destination: main}]
"#;

#[tokio::test]
async fn mirror_receives_a_copy_with_body() {
    let (shadow, mut seen) = recorder().await;
    let bound = waypoint(CONFIG, &[backend("main").await, shadow]).await;
    let req = Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/echo",
            bound.proxy_addr.expect("plain listener")
        ))
        .header("host", "reviews:9080")
        .body(full("payload"))
        .expect("request");
    let (status, _, body) = send(&http1(), req).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "payload"),
        "real response is the main backend's"
    );
    let (host, path, copied) = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("mirror in time")
        .expect("mirror");
    assert_eq!(host, "reviews-shadow:9080");
    assert_eq!(path, "/echo");
    assert_eq!(copied, Bytes::from_static(b"payload"));
}

#[tokio::test]
async fn a_stuck_mirror_does_not_delay_the_response() {
    // The mirror target accepts connections but never answers.
    let hole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let bound = waypoint(CONFIG, &[backend("main").await, hole_addr]).await;
    for _ in 0..3 {
        // `send` fails the test if a response takes longer than WAIT; the mirror's own timeout
        // is the same length, so a response held by the mirror would not come back in time.
        let (status, _, body) = send(
            &http1(),
            get(bound.proxy_addr.expect("plain listener"), "reviews", "/x"),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "main /x"));
    }
}
