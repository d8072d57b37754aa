//! Value matching with Istio's conventions: `*` alone, a leading `*` (suffix match) or a trailing
//! `*` (prefix match); positive lists match if any value does, negative lists if none does.

use std::net::IpAddr;

use ipnet::IpNet;

/// Istio-style wildcard string match. `*` alone matches any non-empty value.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    pattern == value
}

/// Like [`wildcard`], ignoring ASCII case (hosts).
pub fn wildcard_ignore_case(pattern: &str, value: &str) -> bool {
    wildcard(&pattern.to_ascii_lowercase(), &value.to_ascii_lowercase())
}

/// A host pattern matches the host with or without its port, unless the pattern names a port.
pub fn host(pattern: &str, value: &str) -> bool {
    wildcard_ignore_case(pattern, value) || wildcard_ignore_case(pattern, without_port(value))
}

/// `name:port` -> `name`, `[v6]:port` and `[v6]` -> `v6`; anything else unchanged.
fn without_port(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    }
}

/// A positive and a negative list over one value: any of `values` (if non-empty) and none of
/// `not_values`. `value` is `None` when the attribute is absent (e.g. no principal on
/// plaintext): then a positive list never matches and a negative list always does.
pub fn lists<T: ?Sized, P>(
    values: &[P],
    not_values: &[P],
    value: Option<&T>,
    matches: impl Fn(&P, &T) -> bool,
) -> bool {
    let positive = values.is_empty() || value.is_some_and(|v| values.iter().any(|p| matches(p, v)));
    let negative = value.is_some_and(|v| not_values.iter().any(|p| matches(p, v)));
    positive && !negative
}

/// A value is in a block (an address or CIDR).
pub fn ip_in(block: &IpNet, ip: &IpAddr) -> bool {
    block.contains(ip)
}

/// A textual condition value (address or CIDR) contains `ip`; unparseable values never match.
pub fn ip_text(value: &str, ip: &IpAddr) -> bool {
    value
        .parse::<IpNet>()
        .map(|net| net.contains(ip))
        .or_else(|_| value.parse::<IpAddr>().map(|v| v == *ip))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_forms() {
        let cases = [
            ("*", "anything", true),
            ("*", "", false),
            ("cluster.local/ns/a/*", "cluster.local/ns/a/sa/x", true),
            ("cluster.local/ns/a/*", "cluster.local/ns/b/sa/x", false),
            ("*/sa/x", "cluster.local/ns/a/sa/x", true),
            ("*/sa/x", "cluster.local/ns/a/sa/y", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(wildcard(pattern, value), want, "{pattern:?} vs {value:?}");
        }
    }

    #[test]
    fn hosts_ignore_case_and_port() {
        assert!(host("Website.demo", "website.DEMO"));
        assert!(host("website.demo", "website.demo:8080"));
        assert!(host("*.demo", "website.demo:8080"));
        assert!(host("website.demo:8080", "website.demo:8080"));
        assert!(!host("website.demo:9090", "website.demo:8080"));
        assert!(host("::1", "[::1]:8080"));
        assert!(!host("website.demo", "other.demo"));
    }

    #[test]
    fn absent_values_fail_positive_and_pass_negative_lists() {
        let eq = |p: &&str, v: &str| *p == v;
        assert!(!lists(&["a"], &[], None, eq));
        assert!(lists::<str, &str>(&[], &["a"], None, eq));
        assert!(lists(&["a", "b"], &[], Some("b"), eq));
        assert!(!lists(&["a", "b"], &["b"], Some("b"), eq));
        assert!(lists::<str, &str>(&[], &[], None, eq));
    }

    #[test]
    fn ip_condition_values() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(ip_text("10.1.0.0/16", &ip));
        assert!(ip_text("10.1.2.3", &ip));
        assert!(!ip_text("10.2.0.0/16", &ip));
        assert!(!ip_text("not-an-ip", &ip));
    }
}
