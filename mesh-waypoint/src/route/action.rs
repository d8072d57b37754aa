//! What a matched rule does to a request: header edits, rewrites, redirects, weighted splits.

use http::{
    header::{HeaderName, HeaderValue, HOST, LOCATION},
    uri::PathAndQuery,
    HeaderMap, StatusCode, Uri,
};

use super::RouteError;
use crate::config::{HeaderOps, PathRewrite, RedirectConfig, RewriteConfig, WeightedDestination};

/// Header edits with names and values validated at load time.
#[derive(Debug, Clone, Default)]
pub struct CompiledHeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledHeaderOps {
    /// Validates every name and value.
    pub fn compile(ops: &HeaderOps) -> Result<Self, RouteError> {
        Ok(Self {
            remove: ops
                .remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
            set: pairs(ops.set.iter())?,
            add: pairs(ops.add.iter())?,
        })
    }

    /// Applies the edits in Envoy's order: remove, set, add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

fn header_name(name: &str) -> Result<HeaderName, RouteError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| RouteError::BadHeaderName {
        name: name.to_owned(),
    })
}

fn pairs<'a>(
    items: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<(HeaderName, HeaderValue)>, RouteError> {
    items
        .map(|(n, v)| {
            let value = HeaderValue::from_str(v).map_err(|_| RouteError::BadHeaderValue {
                name: n.clone(),
                value: v.clone(),
            })?;
            Ok((header_name(n)?, value))
        })
        .collect()
}

/// Computes the rewritten path: `Full` replaces it, `Prefix` replaces the matched prefix (or the
/// whole path when the winning block was not a prefix match). The query string is kept.
pub fn rewrite_path(uri: &Uri, rewrite: &PathRewrite, matched_prefix: Option<&str>) -> String {
    let path = uri.path();
    let new_path = match (rewrite, matched_prefix) {
        (PathRewrite::Full(p), _) | (PathRewrite::Prefix(p), None) => p.clone(),
        (PathRewrite::Prefix(p), Some(prefix)) => {
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            join_prefix(p, rest)
        }
    };
    match uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    }
}

/// Replaces the prefix as plain text like Envoy's `prefix_rewrite`, but without doubling the
/// slash (Gateway API `ReplacePrefixMatch`: `/api` -> `/` on `/api/v1` gives `/v1`); the result
/// always starts with `/`.
fn join_prefix(replacement: &str, rest: &str) -> String {
    let joined = match rest.strip_prefix('/') {
        Some(tail) if replacement.ends_with('/') => format!("{replacement}{tail}"),
        _ => format!("{replacement}{rest}"),
    };
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// Applies a rewrite to the request's URI and `Host`.
pub fn apply_rewrite(
    uri: &mut Uri,
    headers: &mut HeaderMap,
    rewrite: &RewriteConfig,
    matched_prefix: Option<&str>,
) -> Result<(), RouteError> {
    if let Some(path) = &rewrite.path {
        let pq = rewrite_path(uri, path, matched_prefix);
        let pq = PathAndQuery::try_from(pq.as_str())
            .map_err(|_| RouteError::BadRewrite { value: pq.clone() })?;
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = Some(pq);
        *uri = Uri::from_parts(parts).map_err(|_| RouteError::BadRewrite {
            value: "uri".into(),
        })?;
    }
    if let Some(authority) = &rewrite.authority {
        let value = HeaderValue::from_str(authority).map_err(|_| RouteError::BadRewrite {
            value: authority.clone(),
        })?;
        headers.insert(HOST, value);
    }
    Ok(())
}

/// Builds the redirect answer: status and `Location`.
pub fn redirect(
    uri: &Uri,
    host: &str,
    spec: &RedirectConfig,
    matched_prefix: Option<&str>,
) -> Result<(StatusCode, HeaderMap), RouteError> {
    let scheme = spec.scheme.as_deref().unwrap_or("http");
    let authority = spec.authority.as_deref().unwrap_or(host);
    let authority = match spec.port {
        Some(port) => format!("{}:{port}", strip_port(authority)),
        None => authority.to_owned(),
    };
    let pq = match &spec.path {
        Some(p) => rewrite_path(uri, p, matched_prefix),
        None => uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
    };
    let location = format!("{scheme}://{authority}{pq}");
    let code = spec.code.unwrap_or(301);
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(StatusCode::is_redirection)
        .ok_or(RouteError::BadRedirectCode { code })?;
    let value = HeaderValue::from_str(&location).map_err(|_| RouteError::BadRewrite {
        value: location.clone(),
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(LOCATION, value);
    Ok((status, headers))
}

/// `host[:port]` without the port (IPv6 literals keep their brackets).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// The port of `host[:port]` when one is written (IPv6 literals: after the closing bracket).
pub fn explicit_port(authority: &str) -> Option<u16> {
    let rest = &authority[strip_port(authority).len()..];
    rest.strip_prefix(':')?.parse().ok()
}

/// A weighted choice among targets.
#[derive(Debug, Clone)]
pub struct WeightedTargets {
    targets: Vec<WeightedDestination>,
    total: u64,
}

impl WeightedTargets {
    /// Validates that the weights do not sum to zero.
    pub fn new(targets: Vec<WeightedDestination>) -> Result<Self, RouteError> {
        let total = targets.iter().map(|t| u64::from(t.weight)).sum();
        if total == 0 {
            return Err(RouteError::ZeroWeights);
        }
        Ok(Self { targets, total })
    }

    /// Sum of the weights: the range a roll is drawn from.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The target for a roll in `0..total` (rolls past the end wrap).
    pub fn pick(&self, roll: u64) -> &WeightedDestination {
        let mut roll = roll % self.total;
        for t in &self.targets {
            let w = u64::from(t.weight);
            if roll < w {
                return t;
            }
            roll -= w;
        }
        // Unreachable when `total` is the sum of weights; fall back to the last target.
        &self.targets[self.targets.len() - 1]
    }

    /// All targets, in order.
    pub fn targets(&self) -> &[WeightedDestination] {
        &self.targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_path_table() {
        let full = PathRewrite::Full("/new".into());
        let prefix = |p: &str| PathRewrite::Prefix(p.into());
        let cases = [
            ("/old/x?q=1", full.clone(), Some("/old"), "/new?q=1"),
            ("/old/x", prefix("/v2"), Some("/old"), "/v2/x"),
            ("/old/x", prefix("/"), Some("/old"), "/x"),
            ("/old", prefix("/"), Some("/old"), "/"),
            ("/old/x", prefix("/v2/"), Some("/old/"), "/v2/x"),
            ("/oldx", prefix("/v2"), Some("/old"), "/v2x"),
            ("/exact", prefix("/other"), None, "/other"),
            ("/a?b=c", prefix(""), Some("/a"), "/?b=c"),
        ];
        for (uri, rw, matched, want) in cases {
            let uri: Uri = uri.parse().expect("uri");
            assert_eq!(
                rewrite_path(&uri, &rw, matched),
                want,
                "{uri} {rw:?} {matched:?}"
            );
        }
    }

    #[test]
    fn header_ops_remove_then_set_then_add() {
        let ops: HeaderOps = crate::config::from_yaml(
            "{remove: [x-gone, x-set], set: {x-set: new}, add: {x-add: two}}",
        )
        .expect("yaml");
        let ops = CompiledHeaderOps::compile(&ops).expect("valid");
        let mut h = HeaderMap::new();
        h.insert("x-gone", HeaderValue::from_static("1"));
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("one"));
        ops.apply(&mut h);
        assert!(h.get("x-gone").is_none());
        assert_eq!(h.get("x-set").map(|v| v.as_bytes()), Some(&b"new"[..]));
        let added: Vec<_> = h.get_all("x-add").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(added, vec![&b"one"[..], &b"two"[..]]);
    }

    #[test]
    fn bad_header_values_are_rejected() {
        let ops: HeaderOps = crate::config::from_yaml("{set: {x: \"a\\nb\"}}").expect("yaml");
        assert!(matches!(
            CompiledHeaderOps::compile(&ops),
            Err(RouteError::BadHeaderValue { .. })
        ));
    }

    #[test]
    fn rewrite_sets_authority_and_path() {
        let mut uri: Uri = "/api/items?id=3".parse().expect("uri");
        let mut h = HeaderMap::new();
        let rw: RewriteConfig =
            crate::config::from_yaml("{path: {prefix: /v1}, authority: backend.internal}")
                .expect("yaml");
        apply_rewrite(&mut uri, &mut h, &rw, Some("/api")).expect("rewrite");
        assert_eq!(uri.to_string(), "/v1/items?id=3");
        assert_eq!(
            h.get(HOST).map(|v| v.as_bytes()),
            Some(&b"backend.internal"[..])
        );
    }

    #[test]
    fn redirect_table() {
        let uri: Uri = "/a/b?x=1".parse().expect("uri");
        let cases = [
            ("{}", 301, "http://svc/a/b?x=1"),
            ("{scheme: https, code: 302}", 302, "https://svc/a/b?x=1"),
            (
                "{authority: other:8080, port: 9090}",
                301,
                "http://other:9090/a/b?x=1",
            ),
            ("{path: {full: /z}}", 301, "http://svc/z?x=1"),
            ("{path: {prefix: /n}}", 301, "http://svc/n/b?x=1"),
        ];
        for (yaml, code, want) in cases {
            let spec: RedirectConfig = crate::config::from_yaml(yaml).expect("yaml");
            let (status, headers) = redirect(&uri, "svc", &spec, Some("/a")).expect("redirect");
            assert_eq!(status.as_u16(), code, "{yaml}");
            assert_eq!(
                headers.get(LOCATION).map(|v| v.as_bytes()),
                Some(want.as_bytes()),
                "{yaml}"
            );
        }
        let bad: RedirectConfig = crate::config::from_yaml("{code: 200}").expect("yaml");
        assert!(matches!(
            redirect(&uri, "svc", &bad, None),
            Err(RouteError::BadRedirectCode { code: 200 })
        ));
    }

    #[test]
    fn explicit_port_table() {
        for (input, want) in [
            ("svc", None),
            ("svc:8080", Some(8080)),
            ("svc:", None),
            ("svc:99999", None),
            ("[::1]", None),
            ("[::1]:80", Some(80)),
        ] {
            assert_eq!(explicit_port(input), want, "{input}");
        }
    }

    #[test]
    fn strip_port_table() {
        for (input, want) in [
            ("a", "a"),
            ("a:80", "a"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
        ] {
            assert_eq!(strip_port(input), want);
        }
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let t = |name: &str, weight| WeightedDestination {
            destination: name.into(),
            subset: None,
            weight,
        };
        let w = WeightedTargets::new(vec![t("a", 90), t("b", 10), t("c", 0)]).expect("weights");
        assert_eq!(w.total(), 100);
        let counts = (0..w.total()).fold([0; 3], |mut acc, roll| {
            let i = match w.pick(roll).destination.as_str() {
                "a" => 0,
                "b" => 1,
                _ => 2,
            };
            acc[i] += 1;
            acc
        });
        assert_eq!(counts, [90, 10, 0]);
        assert!(matches!(
            WeightedTargets::new(vec![t("z", 0)]),
            Err(RouteError::ZeroWeights)
        ));
    }
}
