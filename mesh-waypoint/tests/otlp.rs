//! OTLP span export against an in-process OTLP/gRPC collector on loopback: one server span per
//! request with the propagated ids, the caller's span as parent, HTTP and mesh attributes and an
//! error status for 5xx; a collector that never answers costs requests nothing and the queue
//! bound holds (overflow is dropped and counted).

mod support;

use std::{net::SocketAddr, time::Duration};

use http::StatusCode;
use mesh_waypoint::telemetry::otlp::{
    proto::{
        any_value::Value,
        span::SpanKind,
        status::StatusCode as Code,
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse, Span,
    },
    OtlpConfig,
};
use support::*;
use tokio::{net::TcpListener, sync::mpsc};
use tonic::{Request, Response, Status};

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

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Forwards every exported span, or never answers when `hang`.
struct Collector {
    spans: mpsc::UnboundedSender<Span>,
    hang: bool,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        let request = request.into_inner();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.spans.send(span);
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn collector(hang: bool) -> (SocketAddr, mpsc::UnboundedReceiver<Span>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (spans, received) = mpsc::unbounded_channel();
    let service = TraceServiceServer::new(Collector { spans, hang });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, received)
}

fn otlp(collector: SocketAddr) -> OtlpConfig {
    let mut config = OtlpConfig::new(format!("http://{collector}"), "waypoint.test");
    config.batch_delay = Duration::from_millis(5);
    config
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key} is no string: {other:?}"),
    }
}

async fn traced(proxy: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap) {
    let mut request = get(proxy, "reviews", path);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    request
        .headers_mut()
        .insert("traceparent", traceparent.parse().expect("value"));
    let (status, headers, _) = send(&http1(), request).await;
    (status, headers)
}

async fn next_span(spans: &mut mpsc::UnboundedReceiver<Span>) -> Span {
    tokio::time::timeout(WAIT, spans.recv())
        .await
        .expect("a span within the wait")
        .expect("collector alive")
}

#[tokio::test]
async fn spans_carry_ids_parent_attributes_and_error_status() {
    let (collector, mut spans) = collector(false).await;
    let mut app = app_config(CONFIG, &[backend("v1").await]);
    app.otlp = Some(otlp(collector));
    let bound = mesh_waypoint::app::build(app).await.expect("starts");
    let proxy = bound.proxy_addr.expect("plain listener");

    let (status, headers) = traced(proxy, "/a").await;
    assert_eq!(status, StatusCode::OK);
    let forwarded = headers
        .get("echo-traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("traceparent forwarded")
        .to_owned();
    let span = next_span(&mut spans).await;
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    let ours = format!("00-{TRACE}-{}-01", hex(&span.span_id));
    assert_eq!(
        forwarded, ours,
        "the exported span is the one propagated upstream"
    );
    assert_eq!(span.kind, i32::from(SpanKind::Server));
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert!(span.start_time_unix_nano > 0);
    assert_eq!(text(&span, "http.request.method"), "GET");
    assert_eq!(text(&span, "destination.service"), "reviews");
    assert_eq!(text(&span, "destination.subset"), "v1");
    assert_eq!(
        text(&span, "http.route"),
        span.name.trim_start_matches("GET ")
    );
    assert!(matches!(
        attribute(&span, "http.response.status_code"),
        Some(Value::IntValue(200))
    ));
    let status = span.status.as_ref().expect("status");
    assert_eq!(status.code, i32::from(Code::Unset));

    let (status, _) = traced(proxy, "/status/503").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let failed = next_span(&mut spans).await;
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(i32::from(Code::Error))
    );
    assert_ne!(failed.span_id, span.span_id, "a new span per request");
}

#[tokio::test]
async fn a_hung_collector_never_blocks_requests_and_the_queue_bound_holds() {
    let (collector, _spans) = collector(true).await;
    let mut app = app_config(CONFIG, &[backend("v1").await]);
    let mut config = otlp(collector);
    config.queue_capacity = 2;
    config.max_batch = 1;
    app.otlp = Some(config);
    app.metrics = Some("127.0.0.1:0".parse().expect("addr"));
    let bound = mesh_waypoint::app::build(app).await.expect("starts");
    let proxy = bound.proxy_addr.expect("plain listener");
    for _ in 0..10 {
        let (status, _) = traced(proxy, "/a").await;
        assert_eq!(status, StatusCode::OK);
    }
    // At most one span is in the exporter's hands and two queued: seven or more are dropped.
    let metrics = bound.metrics_addr.expect("metrics");
    let dropped = tokio::time::timeout(WAIT, async {
        loop {
            let (_, _, text) = send(&http1(), get(metrics, "metrics", "/metrics")).await;
            let dropped = text
                .lines()
                .find(|l| l.starts_with("weft_waypoint_otlp_spans_dropped_total "))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0);
            if dropped >= 7 {
                return dropped;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("overflow counted");
    assert!(dropped <= 8, "only overflow is dropped: {dropped}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
