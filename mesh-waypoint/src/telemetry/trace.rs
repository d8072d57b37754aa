//! Trace context propagation: W3C `traceparent` and Zipkin B3 multi-header, plus
//! `x-request-id`. The waypoint joins an incoming trace (or starts one), creates its own span
//! id, and forwards both header styles so either kind of application keeps the trace.
//! The ids appear in the access log and, with OTLP export on, in the request's span
//! ([`super::otlp`]).

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::rng::RandomSource;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The context of the waypoint's span for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 128-bit trace id (B3 64-bit ids are left-padded with zeros).
    pub trace_id: u128,
    /// The waypoint's span id.
    pub span_id: u64,
    /// The caller's span id, when joined.
    pub parent_id: Option<u64>,
    /// Sampling decision.
    pub sampled: bool,
    /// `x-request-id`, kept or generated.
    pub request_id: String,
}

impl TraceContext {
    /// Joins the incoming trace (W3C first, then B3) or starts a new sampled one.
    pub fn from_headers(headers: &HeaderMap, rng: &dyn RandomSource) -> Self {
        let incoming = parse_traceparent(headers).or_else(|| parse_b3(headers));
        let span_id = nonzero(rng);
        let request_id = headers
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(
                || format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
                str::to_owned,
            );
        match incoming {
            Some((trace_id, parent, sampled)) => Self {
                trace_id,
                span_id,
                parent_id: Some(parent),
                sampled,
                request_id,
            },
            None => {
                let trace_id = (u128::from(nonzero(rng)) << 64) | u128::from(rng.next_u64());
                Self {
                    trace_id,
                    span_id,
                    parent_id: None,
                    sampled: true,
                    request_id,
                }
            }
        }
    }

    /// Writes `traceparent`, B3 headers and `x-request-id` for the upstream request.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let flags = if self.sampled { "01" } else { "00" };
        let pairs = [
            (
                TRACEPARENT,
                format!("00-{:032x}-{:016x}-{flags}", self.trace_id, self.span_id),
            ),
            (B3_TRACE, format!("{:032x}", self.trace_id)),
            (B3_SPAN, format!("{:016x}", self.span_id)),
            (B3_SAMPLED, if self.sampled { "1" } else { "0" }.to_owned()),
            (REQUEST_ID, self.request_id.clone()),
        ];
        for (name, value) in pairs {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        headers.remove(&B3_PARENT);
        if let Some(parent) = self.parent_id {
            if let Ok(v) = HeaderValue::from_str(&format!("{parent:016x}")) {
                headers.insert(B3_PARENT, v);
            }
        }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

fn nonzero(rng: &dyn RandomSource) -> u64 {
    rng.next_u64().max(1)
}

fn text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `00-<32 hex trace>-<16 hex parent>-<2 hex flags>`; all-zero ids are invalid (W3C).
fn parse_traceparent(headers: &HeaderMap) -> Option<(u128, u64, bool)> {
    let mut parts = text(headers, &TRACEPARENT)?.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || parent.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let parent = u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, parent, flags & 1 == 1))
}

/// B3 multi-header: 16 or 32 hex trace id, 16 hex span id; sampled unless `x-b3-sampled: 0`.
fn parse_b3(headers: &HeaderMap) -> Option<(u128, u64, bool)> {
    let trace = text(headers, &B3_TRACE).filter(|t| t.len() == 16 || t.len() == 32)?;
    let span = text(headers, &B3_SPAN).filter(|s| s.len() == 16)?;
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    let sampled = text(headers, &B3_SAMPLED).is_none_or(|s| s != "0");
    Some((trace, span, sampled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Sequence;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    type Case<'a> = (&'a [(&'a str, &'a str)], Option<u128>, Option<u64>, bool);

    #[test]
    fn join_or_start_table() {
        let rng = Sequence::new(vec![0xabc]);
        let cases: [Case<'_>; 6] = [
            (
                &[("traceparent", TP)],
                Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
                Some(0x00f067aa0ba902b7),
                true,
            ),
            (
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                )],
                Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
                Some(0x00f067aa0ba902b7),
                false,
            ),
            (
                &[(
                    "traceparent",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                )],
                None,
                None,
                true,
            ),
            (
                &[
                    ("x-b3-traceid", "463ac35c9f6413ad"),
                    ("x-b3-spanid", "a2fb4a1d1a96d312"),
                    ("x-b3-sampled", "0"),
                ],
                Some(0x463ac35c9f6413ad),
                Some(0xa2fb4a1d1a96d312),
                false,
            ),
            (
                &[("x-b3-traceid", "zz"), ("x-b3-spanid", "a2fb4a1d1a96d312")],
                None,
                None,
                true,
            ),
            (&[], None, None, true),
        ];
        for (input, trace, parent, sampled) in cases {
            let ctx = TraceContext::from_headers(&headers(input), &rng);
            if let Some(t) = trace {
                assert_eq!(ctx.trace_id, t, "{input:?}");
            } else {
                assert_ne!(ctx.trace_id, 0, "{input:?}");
            }
            assert_eq!(ctx.parent_id, parent, "{input:?}");
            assert_eq!(ctx.sampled, sampled, "{input:?}");
            assert_eq!(ctx.span_id, 0xabc);
        }
    }

    #[test]
    fn inject_writes_both_styles_with_our_span() {
        let rng = Sequence::new(vec![0x1234]);
        let ctx = TraceContext::from_headers(
            &headers(&[("traceparent", TP), ("x-request-id", "req-1")]),
            &rng,
        );
        let mut out = headers(&[("x-b3-parentspanid", "stale")]);
        ctx.inject(&mut out);
        let get = |n: &str| {
            out.get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert_eq!(
            get("traceparent"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-01"
        );
        assert_eq!(get("x-b3-traceid"), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(get("x-b3-spanid"), "0000000000001234");
        assert_eq!(get("x-b3-parentspanid"), "00f067aa0ba902b7");
        assert_eq!(get("x-b3-sampled"), "1");
        assert_eq!(get("x-request-id"), "req-1");
    }
}
