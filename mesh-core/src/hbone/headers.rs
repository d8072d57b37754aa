//! Headers carried on the `CONNECT`: `forwarded` (original client), W3C `traceparent`, and
//! `baggage` with the source workload's Kubernetes metadata.
//!
//! Values are built from validated parts only, so nothing from a peer is ever echoed into a
//! header unchecked; parsers are strict and bounded.

use std::{fmt, net::SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};

/// `forwarded` (RFC 7239).
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// W3C trace context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C baggage.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Header values that cannot be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A host, baggage key or value holds characters outside the allowed set.
    #[error("header part {0:?} has characters outside [A-Za-z0-9._-/]")]
    Unsafe(String),
    /// The traceparent is not `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids.
    #[error("malformed traceparent {0:?}")]
    TraceParent(String),
}

fn safe(part: &str) -> Result<&str, HeaderError> {
    let ok = !part.is_empty()
        && part.len() <= 253
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    ok.then_some(part)
        .ok_or_else(|| HeaderError::Unsafe(part.to_owned()))
}

/// `forwarded: for="<ip:port>"[;host=<service host>]`.
pub fn forwarded(client: SocketAddr, host: Option<&str>) -> Result<HeaderValue, HeaderError> {
    let mut value = format!("for=\"{client}\"");
    if let Some(host) = host {
        value.push_str(";host=");
        value.push_str(safe(host)?);
    }
    HeaderValue::from_str(&value).map_err(|_| HeaderError::Unsafe(value))
}

/// The client address in the first `forwarded` element's `for=`, if present and an `ip:port`.
pub fn forwarded_for(headers: &HeaderMap) -> Option<SocketAddr> {
    let value = headers.get(FORWARDED)?.to_str().ok()?;
    let first = value.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (key, val) = pair.trim().split_once('=')?;
        if !key.eq_ignore_ascii_case("for") {
            return None;
        }
        super::authority::parse(val.trim_matches('"')).ok()
    })
}

/// A W3C `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id, never all zero.
    pub trace_id: [u8; 16],
    /// 8-byte parent span id, never all zero.
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// A new random trace (not sampled).
    pub fn generate() -> Self {
        let trace_id = random_non_zero::<16>();
        Self {
            trace_id,
            parent_id: random_non_zero::<8>(),
            flags: 0,
        }
    }

    /// The same trace with a new span id, for the next hop.
    pub fn child(&self) -> Self {
        Self {
            parent_id: random_non_zero::<8>(),
            ..*self
        }
    }

    /// Parses `00-<trace>-<parent>-<flags>`.
    pub fn parse(text: &str) -> Result<Self, HeaderError> {
        let err = || HeaderError::TraceParent(text.chars().take(64).collect());
        let parts: Vec<&str> = text.split('-').collect();
        let [version, trace, parent, flags] = parts.as_slice() else {
            return Err(err());
        };
        if *version != "00" {
            return Err(err());
        }
        let trace_id = hex_array::<16>(trace).ok_or_else(err)?;
        let parent_id = hex_array::<8>(parent).ok_or_else(err)?;
        let [flags] = hex_array::<1>(flags).ok_or_else(err)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return Err(err());
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The header value.
    pub fn to_header(&self) -> HeaderValue {
        // Only hex digits and '-': always a valid header value.
        HeaderValue::from_str(&self.to_string()).unwrap_or(HeaderValue::from_static(""))
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-")?;
        self.trace_id
            .iter()
            .try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "-")?;
        self.parent_id
            .iter()
            .try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "-{:02x}", self.flags)
    }
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn random_non_zero<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    let rng = ring::rand::SystemRandom::new();
    if rng.fill(&mut out).is_err() || out == [0u8; N] {
        // The OS RNG failing is not a reason to drop traffic: a fixed non-zero id still parses.
        out[N - 1] = 1;
    }
    out
}

/// `baggage` from `key=value` pairs (e.g. `k8s.namespace.name`, `service.name`).
pub fn baggage(pairs: &[(&str, &str)]) -> Result<HeaderValue, HeaderError> {
    let mut parts = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        parts.push(format!("{}={}", safe(key)?, safe(value)?));
    }
    let value = parts.join(",");
    HeaderValue::from_str(&value).map_err(|_| HeaderError::Unsafe(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips_and_rejects_injection() {
        let client: SocketAddr = "10.0.0.7:41234".parse().unwrap();
        let value = forwarded(client, Some("reviews.default.svc.cluster.local")).unwrap();
        assert_eq!(
            value,
            "for=\"10.0.0.7:41234\";host=reviews.default.svc.cluster.local"
        );
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED, value);
        assert_eq!(forwarded_for(&headers), Some(client));
        assert!(forwarded(client, Some("evil;for=1.2.3.4")).is_err());
        headers.insert(FORWARDED, HeaderValue::from_static("for=unknown"));
        assert_eq!(forwarded_for(&headers), None);
    }

    #[test]
    fn traceparent_generates_parses_and_rejects() {
        let trace = TraceParent::generate();
        let text = trace.to_string();
        assert_eq!(text.len(), 55);
        assert_eq!(TraceParent::parse(&text), Ok(trace));
        let child = trace.child();
        assert_eq!(child.trace_id, trace.trace_id);
        assert_ne!(child.parent_id, trace.parent_id);
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(good).unwrap().flags, 1);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn baggage_joins_safe_pairs_only() {
        let value = baggage(&[
            ("k8s.namespace.name", "default"),
            ("service.name", "reviews"),
        ]);
        assert_eq!(
            value.unwrap(),
            "k8s.namespace.name=default,service.name=reviews"
        );
        assert!(baggage(&[("k", "a,b=c")]).is_err());
    }
}
