//! Per-request overrides from Envoy's request headers, honoured as Envoy does for internal
//! callers only (verified mesh peers, over HBONE) and always removed before forwarding:
//!
//! - `x-envoy-upstream-rq-timeout-ms`: overall timeout in ms (`0` disables it).
//! - `x-envoy-upstream-rq-per-try-timeout-ms`: per-try timeout in ms.
//! - `x-envoy-max-retries`: retries after the first attempt (capped at [`MAX_RETRIES`]).
//! - `x-envoy-retry-on`: retry conditions, Envoy names.
//!
//! Values that do not parse are ignored (the route's setting stays), never an error. From an
//! external caller (the ingress listeners, plain HTTP) every `x-envoy-*` header is removed
//! unread, as Envoy sanitizes external requests: a client at the edge cannot switch off the
//! route timeout or ask for retries.

use std::time::Duration;

use http::{HeaderMap, HeaderName};

use super::retry::{RetryOn, RetryPolicy};

/// Upper bound on retries a caller can ask for.
pub const MAX_RETRIES: u32 = 10;

const TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
const PER_TRY: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
const MAX_RETRIES_HEADER: HeaderName = HeaderName::from_static("x-envoy-max-retries");
const RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");

/// Overrides found on one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `Some(None)` disables the timeout; `None` keeps the route's.
    pub timeout: Option<Option<Duration>>,
    /// Per-try timeout.
    pub per_try_timeout: Option<Duration>,
    /// Retries.
    pub retries: Option<u32>,
    /// Conditions.
    pub retry_on: Option<RetryOn>,
}

impl Overrides {
    /// Reads and removes the override headers of a caller inside the mesh.
    pub fn take(headers: &mut HeaderMap) -> Self {
        let mut text = |name: &HeaderName| {
            let value = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            headers.remove(name);
            value
        };
        let millis = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        Self {
            timeout: millis(text(&TIMEOUT)).map(|ms| (ms > 0).then(|| Duration::from_millis(ms))),
            per_try_timeout: millis(text(&PER_TRY))
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            retries: millis(text(&MAX_RETRIES_HEADER))
                .map(|n| n.min(u64::from(MAX_RETRIES)) as u32),
            retry_on: text(&RETRY_ON).map(|s| RetryOn::parse(&s)),
        }
    }

    /// Removes every `x-envoy-*` header of an external caller, honouring none.
    pub fn strip_external(headers: &mut HeaderMap) {
        let envoy: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("x-envoy-"))
            .cloned()
            .collect();
        for name in envoy {
            headers.remove(name);
        }
    }

    /// The route timeout after overrides.
    pub fn timeout(&self, route: Option<Duration>) -> Option<Duration> {
        self.timeout.unwrap_or(route)
    }

    /// The retry policy after overrides.
    pub fn retry_policy(&self, route: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries.unwrap_or(route.retries),
            per_try_timeout: self.per_try_timeout.or(route.per_try_timeout),
            on: self.retry_on.unwrap_or(route.on),
            backoff: route.backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(pairs: &[(&HeaderName, &str)]) -> (Overrides, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert((*k).clone(), v.parse().expect("value"));
        }
        (Overrides::take(&mut h), h)
    }

    type Case<'a> = (&'a [(&'a HeaderName, &'a str)], Option<Duration>, u32);

    #[test]
    fn override_table() {
        let route = Some(Duration::from_secs(5));
        let cases: [Case<'_>; 5] = [
            (&[], route, 2),
            (&[(&TIMEOUT, "250")], Some(Duration::from_millis(250)), 2),
            (&[(&TIMEOUT, "0")], None, 2),
            (&[(&TIMEOUT, "abc"), (&MAX_RETRIES_HEADER, "x")], route, 2),
            (&[(&MAX_RETRIES_HEADER, "1000")], route, MAX_RETRIES),
        ];
        for (pairs, timeout, retries) in cases {
            let (o, rest) = take(pairs);
            assert!(rest.is_empty(), "override headers are stripped: {rest:?}");
            assert_eq!(o.timeout(route), timeout, "{pairs:?}");
            let mut base = RetryPolicy::none();
            base.retries = 2;
            assert_eq!(o.retry_policy(base).retries, retries, "{pairs:?}");
        }
    }

    #[test]
    fn external_callers_get_no_overrides_and_lose_every_envoy_header() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-envoy-upstream-rq-timeout-ms", "0"),
            ("x-envoy-max-retries", "10"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-decorator-operation", "x"),
            ("X-Envoy-Original-Path", "/admin"),
            ("x-request-id", "kept"),
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        Overrides::strip_external(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-request-id"]);
        assert_eq!(Overrides::take(&mut h), Overrides::default());
    }

    #[test]
    fn retry_on_and_per_try_override() {
        let (o, _) = take(&[(&RETRY_ON, "5xx,retriable-4xx"), (&PER_TRY, "100")]);
        let p = o.retry_policy(RetryPolicy::none());
        assert!(p.on.five_xx && p.on.retriable_4xx && !p.on.reset);
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(100)));
    }
}
