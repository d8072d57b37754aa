//! In-process telemetry tests: Istio metrics on the metrics port and trace header
//! propagation (the access log has its own test binary, `access_log.rs`).

mod support;

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

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, _, body) = send(&http1(), get(addr, "metrics", "/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    body
}

fn line<'a>(text: &'a str, prefix: &str, needles: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
}

#[tokio::test]
async fn istio_metrics_are_served() {
    let mut app = app_config(CONFIG, &[backend("v1").await]);
    app.metrics = Some("127.0.0.1:0".parse().expect("addr"));
    let bound = mesh_waypoint::app::build(app).await.expect("starts");
    let metrics = bound.metrics_addr.expect("metrics bound");
    let client = http1();
    for _ in 0..2 {
        let (status, _, body) = send(
            &client,
            get(bound.proxy_addr.expect("plain listener"), "reviews", "/a"),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "v1 /a"));
    }
    let (status, _, _) = send(
        &client,
        get(bound.proxy_addr.expect("plain listener"), "ratings", "/a"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Requests are recorded when the proxy drops the finished response body, which can trail
    // the client's read by a moment: scrape until all three are in.
    let text = tokio::time::timeout(WAIT, async {
        loop {
            let text = scrape(metrics).await;
            let count: u64 = text
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            if count >= 3 {
                return text;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("three requests recorded");
    let ok = line(
        &text,
        "istio_requests_total{",
        &[
            "reporter=\"waypoint\"",
            "destination_service=\"reviews\"",
            "destination_service_name=\"reviews\"",
            "destination_version=\"v1\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
        ],
    )
    .unwrap_or_else(|| panic!("200 counter missing:\n{text}"));
    assert!(ok.ends_with(" 2"), "{ok}");
    let nr = line(
        &text,
        "istio_requests_total{",
        &["response_code=\"404\"", "response_flags=\"NR\""],
    )
    .unwrap_or_else(|| panic!("404 counter missing:\n{text}"));
    assert!(nr.ends_with(" 1"), "{nr}");
    // "v1 /a" is 5 bytes; both 200 responses land in the le=10 bucket of response bytes.
    let bytes = line(
        &text,
        "istio_response_bytes_bucket{",
        &["response_code=\"200\"", "le=\"10.0\""],
    )
    .unwrap_or_else(|| panic!("bytes bucket missing:\n{text}"));
    assert!(bytes.ends_with(" 2"), "{bytes}");
    assert!(
        text.contains("istio_request_duration_milliseconds_count{"),
        "{text}"
    );
    let (status, _, _) = send(&client, get(metrics, "x", "/healthz/ready")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn trace_headers_are_propagated() {
    let bound = waypoint(CONFIG, &[backend("v1").await]).await;
    let mut req = get(bound.proxy_addr.expect("plain listener"), "reviews", "/t");
    req.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .expect("value"),
    );
    let (_, headers, _) = send(&http1(), req).await;
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let tp = h("echo-traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "the waypoint adds its own span: {tp}"
    );
    assert_eq!(h("echo-x-b3-traceid"), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(h("echo-x-b3-parentspanid"), "00f067aa0ba902b7");
    assert_eq!(
        h("echo-x-request-id").len(),
        32,
        "a request id is generated"
    );
}

/// Every `istio_requests_total` series in a scrape.
fn request_series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect()
}

#[tokio::test]
async fn invented_host_names_do_not_grow_the_metrics() {
    const REQUESTS: usize = 100_000;
    const IN_FLIGHT: usize = 64;
    let mut app = app_config(CONFIG, &[backend("v1").await]);
    app.metrics = Some("127.0.0.1:0".parse().expect("addr"));
    let bound = mesh_waypoint::app::build(app).await.expect("starts");
    let metrics = bound.metrics_addr.expect("metrics bound");
    let proxy = bound.proxy_addr.expect("plain listener");
    // One HTTP/2 connection, every request naming a host nobody configured.
    let send = h2_connection(proxy).await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..IN_FLIGHT {
        let mut send = send.clone();
        tasks.spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            for i in (worker..REQUESTS).step_by(IN_FLIGHT) {
                let req = http::Request::builder()
                    .uri(format!("http://invented-{i}.example/"))
                    .body(full(""))
                    .expect("request");
                send.ready().await.expect("connection open");
                let response = send.send_request(req).await.expect("answered");
                *statuses.entry(response.status().as_u16()).or_default() += 1;
            }
            statuses
        });
    }
    let mut not_found = 0;
    while let Some(statuses) = tasks.join_next().await {
        let statuses = statuses.expect("worker");
        assert_eq!(statuses.keys().copied().collect::<Vec<_>>(), [404]);
        not_found += statuses[&404];
    }
    assert_eq!(not_found, REQUESTS);
    let text = tokio::time::timeout(WAIT, async {
        loop {
            let text = scrape(metrics).await;
            let count: u64 = request_series(&text)
                .iter()
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            if count >= REQUESTS as u64 {
                return text;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every request recorded");
    let series = request_series(&text);
    assert_eq!(series.len(), 1, "one series for all of them: {series:?}");
    assert!(
        series[0].contains("destination_service=\"unknown\""),
        "{}",
        series[0]
    );
    assert!(!text.contains("invented-"), "no host name became a label");
}
