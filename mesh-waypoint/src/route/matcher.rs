//! Request matching: compiled match blocks evaluated against request heads.
//!
//! Semantics follow Istio `HTTPMatchRequest` and Gateway API `HTTPRouteMatch`: every condition in
//! one block must hold (AND); a rule matches when any of its blocks does (OR); a rule with no
//! blocks matches everything. Regexes must match the whole value, as RE2 `FullMatch` does in Envoy.

use http::{request::Parts, HeaderName};
use regex::Regex;

use super::RouteError;
use crate::config::{HeaderMatchConfig, MatchConfig, StringMatch, ValueMatch};

/// A compiled string condition.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole value matches.
    Regex(Regex),
}

impl StringMatcher {
    /// Compiles a configured condition; regexes are anchored at both ends.
    pub fn compile(spec: &StringMatch) -> Result<Self, RouteError> {
        Ok(match spec {
            StringMatch::Exact(s) => Self::Exact(s.clone()),
            StringMatch::Prefix(s) => Self::Prefix(s.clone()),
            StringMatch::Regex(r) => Self::Regex(full_regex(r)?),
        })
    }

    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

fn full_regex(pattern: &str) -> Result<Regex, RouteError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| RouteError::BadRegex {
        pattern: pattern.to_owned(),
        source: Box::new(source),
    })
}

/// A compiled condition on a header or query parameter.
#[derive(Debug, Clone)]
struct ValueMatcher {
    name: String,
    kind: ValueKind,
    invert: bool,
}

#[derive(Debug, Clone)]
enum ValueKind {
    Value(StringMatcher),
    Present(bool),
}

impl ValueMatcher {
    fn compile(spec: &HeaderMatchConfig, header: bool) -> Result<Self, RouteError> {
        if header {
            HeaderName::from_bytes(spec.name.as_bytes()).map_err(|_| {
                RouteError::BadHeaderName {
                    name: spec.name.clone(),
                }
            })?;
        }
        let kind = match &spec.value {
            ValueMatch::Exact(s) => ValueKind::Value(StringMatcher::Exact(s.clone())),
            ValueMatch::Prefix(s) => ValueKind::Value(StringMatcher::Prefix(s.clone())),
            ValueMatch::Regex(r) => ValueKind::Value(StringMatcher::Regex(full_regex(r)?)),
            ValueMatch::Present(p) => ValueKind::Present(*p),
        };
        let name = if header {
            spec.name.to_ascii_lowercase()
        } else {
            spec.name.clone()
        };
        Ok(Self {
            name,
            kind,
            invert: spec.invert,
        })
    }

    /// Evaluates against the (possibly absent) value. A multi-valued header is tested on its
    /// values joined by "," as Envoy does.
    fn matches(&self, value: Option<&str>) -> bool {
        let hit = match (&self.kind, value) {
            (ValueKind::Present(want), v) => v.is_some() == *want,
            (ValueKind::Value(m), Some(v)) => m.matches(v),
            (ValueKind::Value(_), None) => false,
        };
        hit != self.invert
    }
}

/// A compiled match block.
#[derive(Debug, Clone)]
pub struct RequestMatch {
    path: Option<StringMatcher>,
    method: Option<http::Method>,
    headers: Vec<ValueMatcher>,
    query: Vec<ValueMatcher>,
}

/// What a successful match reports, for rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchOutcome {
    /// The literal prefix the block matched the path on, when it was a prefix match.
    pub matched_prefix: Option<String>,
}

impl RequestMatch {
    /// Compiles one block.
    pub fn compile(spec: &MatchConfig) -> Result<Self, RouteError> {
        let method = spec
            .method
            .as_deref()
            .map(|m| {
                http::Method::from_bytes(m.as_bytes())
                    .map_err(|_| RouteError::BadMethod { method: m.into() })
            })
            .transpose()?;
        Ok(Self {
            path: spec.path.as_ref().map(StringMatcher::compile).transpose()?,
            method,
            headers: compile_all(&spec.headers, true)?,
            query: compile_all(&spec.query_params, false)?,
        })
    }

    /// Evaluates the block; `Some` when every condition holds.
    pub fn evaluate(&self, req: &Parts) -> Option<MatchOutcome> {
        let path = req.uri.path();
        if !self.path.as_ref().is_none_or(|m| m.matches(path)) {
            return None;
        }
        if self.method.as_ref().is_some_and(|m| *m != req.method) {
            return None;
        }
        if !self
            .headers
            .iter()
            .all(|h| h.matches(header_value(req, &h.name).as_deref()))
        {
            return None;
        }
        let query = req.uri.query().unwrap_or("");
        if !self
            .query
            .iter()
            .all(|q| q.matches(query_value(query, &q.name)))
        {
            return None;
        }
        let matched_prefix = match &self.path {
            Some(StringMatcher::Prefix(p)) => Some(p.clone()),
            _ => None,
        };
        Some(MatchOutcome { matched_prefix })
    }
}

fn compile_all(specs: &[HeaderMatchConfig], header: bool) -> Result<Vec<ValueMatcher>, RouteError> {
    specs
        .iter()
        .map(|s| ValueMatcher::compile(s, header))
        .collect()
}

/// The header's values joined by ","; `None` when absent or not valid text. `:authority` style
/// pseudo-headers are not visible here, as in Envoy header matching on regular headers.
fn header_value(req: &Parts, name: &str) -> Option<String> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?.to_str().ok()?;
    let mut joined = first.to_owned();
    for v in values {
        joined.push(',');
        joined.push_str(v.to_str().ok()?);
    }
    Some(joined)
}

/// The first value of query parameter `name` (not percent-decoded, as Envoy matches raw values).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Evaluates a rule's blocks with OR semantics: the first block that matches wins; no blocks
/// matches everything.
pub fn evaluate_any(blocks: &[RequestMatch], req: &Parts) -> Option<MatchOutcome> {
    if blocks.is_empty() {
        return Some(MatchOutcome {
            matched_prefix: None,
        });
    }
    blocks.iter().find_map(|b| b.evaluate(req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WaypointConfig;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("test request").into_parts().0
    }

    fn block(yaml: &str) -> RequestMatch {
        let spec: MatchConfig = crate::config::from_yaml(yaml).expect("test yaml");
        RequestMatch::compile(&spec).expect("compiles")
    }

    #[test]
    fn path_matching_table() {
        let cases = [
            ("path: {exact: /a}", "/a", true),
            ("path: {exact: /a}", "/a/", false),
            ("path: {exact: /a}", "/a?x=1", true),
            ("path: {prefix: /api}", "/api/v1", true),
            ("path: {prefix: /api}", "/ap", false),
            ("path: {regex: '/u/[0-9]+'}", "/u/42", true),
            ("path: {regex: '/u/[0-9]+'}", "/u/42/x", false),
            ("path: {regex: '[0-9]+'}", "/u/42", false),
            ("{}", "/anything", true),
        ];
        for (yaml, uri, want) in cases {
            let got = block(yaml).evaluate(&parts("GET", uri, &[])).is_some();
            assert_eq!(got, want, "{yaml} vs {uri}");
        }
    }

    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], bool);

    #[test]
    fn method_header_and_query_table() {
        let cases: [Case<'_>; 12] = [
            ("method: POST", "POST", "/", &[], true),
            ("method: POST", "GET", "/", &[], false),
            (
                "headers: [{name: X-User, match: {exact: jason}}]",
                "GET",
                "/",
                &[("x-user", "jason")],
                true,
            ),
            (
                "headers: [{name: x-user, match: {exact: jason}}]",
                "GET",
                "/",
                &[("x-user", "Jason")],
                false,
            ),
            (
                "headers: [{name: x-user, match: {prefix: ja}}]",
                "GET",
                "/",
                &[("x-user", "jason")],
                true,
            ),
            (
                "headers: [{name: x-user, match: {regex: 'j.*n'}}]",
                "GET",
                "/",
                &[("x-user", "jason")],
                true,
            ),
            (
                "headers: [{name: x-user, match: {regex: 'j.*n'}}]",
                "GET",
                "/",
                &[("x-user", "jasons")],
                false,
            ),
            (
                "headers: [{name: x-user, match: {present: true}}]",
                "GET",
                "/",
                &[],
                false,
            ),
            (
                "headers: [{name: x-user, match: {present: false}}]",
                "GET",
                "/",
                &[],
                true,
            ),
            (
                "headers: [{name: x-user, match: {exact: a}, invert: true}]",
                "GET",
                "/",
                &[("x-user", "b")],
                true,
            ),
            (
                "query_params: [{name: v, match: {exact: '2'}}]",
                "GET",
                "/p?a=1&v=2",
                &[],
                true,
            ),
            (
                "query_params: [{name: v, match: {present: true}}]",
                "GET",
                "/p?a=1",
                &[],
                false,
            ),
        ];
        for (yaml, method, uri, headers, want) in cases {
            let got = block(yaml).evaluate(&parts(method, uri, headers)).is_some();
            assert_eq!(got, want, "{yaml} vs {method} {uri} {headers:?}");
        }
    }

    #[test]
    fn fields_in_a_block_are_anded() {
        let b =
            block("{method: GET, path: {prefix: /a}, headers: [{name: x, match: {exact: '1'}}]}");
        assert!(b.evaluate(&parts("GET", "/a/b", &[("x", "1")])).is_some());
        assert!(b.evaluate(&parts("POST", "/a/b", &[("x", "1")])).is_none());
        assert!(b.evaluate(&parts("GET", "/b", &[("x", "1")])).is_none());
        assert!(b.evaluate(&parts("GET", "/a/b", &[])).is_none());
    }

    #[test]
    fn blocks_are_ored_and_report_the_prefix() {
        let cfg = WaypointConfig::parse(
            "routes: [{name: r, hosts: ['*'], rules: [{matches: [{path: {exact: /x}}, {path: {prefix: /y}}]}]}]",
        )
        .expect("yaml");
        let blocks: Vec<_> = cfg.routes[0].rules[0]
            .matches
            .iter()
            .map(|m| RequestMatch::compile(m).expect("compiles"))
            .collect();
        let x = evaluate_any(&blocks, &parts("GET", "/x", &[])).expect("x matches");
        assert_eq!(x.matched_prefix, None);
        let y = evaluate_any(&blocks, &parts("GET", "/y/z", &[])).expect("y matches");
        assert_eq!(y.matched_prefix.as_deref(), Some("/y"));
        assert!(evaluate_any(&blocks, &parts("GET", "/z", &[])).is_none());
        assert!(evaluate_any(&[], &parts("GET", "/z", &[])).is_some());
    }

    #[test]
    fn multi_valued_headers_are_joined() {
        let b = block("headers: [{name: x, match: {exact: 'a,b'}}]");
        assert!(b
            .evaluate(&parts("GET", "/", &[("x", "a"), ("x", "b")]))
            .is_some());
    }

    #[test]
    fn bad_specs_are_rejected() {
        let bad_regex: MatchConfig = crate::config::from_yaml("path: {regex: '('}").expect("yaml");
        assert!(matches!(
            RequestMatch::compile(&bad_regex),
            Err(RouteError::BadRegex { .. })
        ));
        let bad_name: MatchConfig =
            crate::config::from_yaml("headers: [{name: 'a b', match: {present: true}}]")
                .expect("yaml");
        assert!(matches!(
            RequestMatch::compile(&bad_name),
            Err(RouteError::BadHeaderName { .. })
        ));
    }
}
