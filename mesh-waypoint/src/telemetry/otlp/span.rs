//! One OTLP server span per request, built from the request's [`RequestLog`] when its response
//! ends: the waypoint's trace/span ids, the caller's span as parent, wall-clock start and end,
//! HTTP and mesh attributes, and an error status for 5xx answers.

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;

use super::proto::{any_value::Value, span::SpanKind, status::StatusCode as Code, *};
use crate::telemetry::RequestLog;

/// W3C trace flag `sampled`, carried in the span's `flags` low byte.
const SAMPLED: u32 = 1;

/// What the response added to the request's record.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// Status sent downstream.
    pub status: StatusCode,
    /// Envoy response flags, `-` when none.
    pub flags: &'a str,
}

/// The request's server span.
pub fn server_span(log: &RequestLog, outcome: Outcome<'_>) -> Span {
    let trace = &log.trace;
    let end = log.started_at + log.start.elapsed();
    Span {
        trace_id: trace.trace_id.to_be_bytes().to_vec(),
        span_id: trace.span_id.to_be_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: trace
            .parent_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: if trace.sampled { SAMPLED } else { 0 },
        name: name(log),
        kind: SpanKind::Server.into(),
        start_time_unix_nano: unix_nanos(log.started_at),
        end_time_unix_nano: unix_nanos(end),
        attributes: attributes(log, outcome),
        dropped_attributes_count: 0,
        status: Some(status(outcome)),
    }
}

/// `<method> <route>`: low cardinality, as OpenTelemetry's HTTP conventions ask.
fn name(log: &RequestLog) -> String {
    let target = log.route.as_deref().unwrap_or(log.host.as_str());
    format!("{} {target}", log.method)
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn status(outcome: Outcome<'_>) -> Status {
    if outcome.status.is_server_error() {
        Status {
            message: format!("{} {}", outcome.status.as_u16(), outcome.flags),
            code: Code::Error.into(),
        }
    } else {
        Status {
            message: String::new(),
            code: Code::Unset.into(),
        }
    }
}

fn attributes(log: &RequestLog, outcome: Outcome<'_>) -> Vec<KeyValue> {
    let (destination, subset) = log.destination.clone().unwrap_or_default();
    let mut out = vec![
        text("http.request.method", log.method.as_str()),
        int("http.response.status_code", outcome.status.as_u16().into()),
        text("url.path", &log.path),
        text("server.address", &log.host),
        text("network.protocol.name", log.protocol),
        text("client.address", &log.peer.ip().to_string()),
        text("guid:x-request-id", &log.trace.request_id),
        text("response_flags", outcome.flags),
    ];
    let optional = [
        ("http.route", log.route.as_deref()),
        ("source.principal", log.principal.as_deref()),
        (
            "source.workload",
            log.workload.as_ref().map(|w| w.workload_name.as_str()),
        ),
        (
            "destination.service",
            Some(destination.as_str()).filter(|d| !d.is_empty()),
        ),
        ("destination.subset", subset.as_deref()),
    ];
    out.extend(
        optional
            .into_iter()
            .filter_map(|(key, value)| Some(text(key, value?))),
    );
    out
}

fn text(key: &str, value: &str) -> KeyValue {
    attribute(key, Value::StringValue(value.to_owned()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, Value::IntValue(value))
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
    }
}
