//! Validation helpers shared by the route translators: each returns the model value or an
//! [`Invalid`] naming the offending field.

use std::time::Duration;

use crate::crd::StringMatch as CrdStringMatch;
use crate::model::{HeaderMatch, HeaderOps, Percentage, StringMatch};
use crate::registry::duration::parse_duration;

/// A validation failure: (field path, message).
pub type Invalid = (String, String);

/// An [`Invalid`] for `field`.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    (field.into(), message.into())
}

/// An Istio string match; exactly one kind must be set.
pub fn string_match(m: &CrdStringMatch, field: &str) -> Result<StringMatch, Invalid> {
    optional_string_match(m, field)?
        .ok_or_else(|| invalid(field, "exactly one of exact, prefix, regex is required"))
}

/// An Istio string match where an empty match means "present".
pub fn optional_string_match(
    m: &CrdStringMatch,
    field: &str,
) -> Result<Option<StringMatch>, Invalid> {
    match (&m.exact, &m.prefix, &m.regex) {
        (None, None, None) => Ok(None),
        (Some(v), None, None) => Ok(Some(StringMatch::Exact(v.clone()))),
        (None, Some(v), None) => Ok(Some(StringMatch::Prefix(v.clone()))),
        (None, None, Some(v)) => Ok(Some(StringMatch::Regex(regex_checked(v, field)?))),
        _ => Err(invalid(
            field,
            "at most one of exact, prefix, regex may be set",
        )),
    }
}

/// The pattern, when it compiles.
pub fn regex_checked(pattern: &str, field: &str) -> Result<String, Invalid> {
    regex::Regex::new(pattern)
        .map(|_| pattern.to_string())
        .map_err(|e| invalid(field, format!("invalid regex {pattern:?}: {e}")))
}

/// An optional duration such as `1.5s` or `100ms`.
pub fn duration(text: Option<&String>, field: &str) -> Result<Option<Duration>, Invalid> {
    text.map(|t| parse_duration(t).map_err(|e| invalid(field, e)))
        .transpose()
}

/// A port number, 1-65535.
pub fn port(number: u32, field: &str) -> Result<u16, Invalid> {
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid(field, format!("invalid port {number}, expected 1-65535")))
}

/// A non-negative weight, `default` when absent.
pub fn weight(value: Option<i32>, default: u32, field: &str) -> Result<u32, Invalid> {
    match value {
        None => Ok(default),
        Some(w) => u32::try_from(w).map_err(|_| invalid(field, format!("negative weight {w}"))),
    }
}

/// A non-negative count (connection limits), `None` when absent.
pub fn count(value: Option<i32>, field: &str) -> Result<Option<u32>, Invalid> {
    value
        .map(|v| u32::try_from(v).map_err(|_| invalid(field, format!("negative value {v}"))))
        .transpose()
}

/// An HTTP status code within `range`.
pub fn status(
    code: u32,
    range: std::ops::RangeInclusive<u16>,
    field: &str,
) -> Result<u16, Invalid> {
    u16::try_from(code)
        .ok()
        .filter(|c| range.contains(c))
        .ok_or_else(|| {
            let (lo, hi) = (range.start(), range.end());
            invalid(field, format!("invalid status {code}, expected {lo}-{hi}"))
        })
}

/// A percentage 0-100; all requests when absent.
pub fn percentage(value: Option<f64>, field: &str) -> Result<Percentage, Invalid> {
    match value {
        None => Ok(Percentage::ALL),
        Some(v) => Percentage::from_percent(v)
            .ok_or_else(|| invalid(field, format!("percentage {v} is not within 0-100"))),
    }
}

/// A valid HTTP header name, lowercased.
pub fn header_name(name: &str, field: &str) -> Result<String, Invalid> {
    let lower = name.to_ascii_lowercase();
    http::HeaderName::from_bytes(lower.as_bytes())
        .map(|_| lower)
        .map_err(|_| invalid(field, format!("invalid header name {name:?}")))
}

fn header_value(value: &str, field: &str) -> Result<String, Invalid> {
    http::HeaderValue::from_str(value)
        .map(|_| value.to_string())
        .map_err(|_| invalid(field, format!("invalid header value {value:?}")))
}

fn header_pairs<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a str)>,
    at: &str,
) -> Result<std::collections::BTreeMap<String, String>, Invalid> {
    items
        .into_iter()
        .map(|(name, value)| {
            let field = format!("{at}.{name}");
            Ok((header_name(name, &field)?, header_value(value, &field)?))
        })
        .collect()
}

/// Header edits from `(name, value)` pairs to set and add and names to remove, each checked.
pub fn header_ops<'a>(
    set: impl IntoIterator<Item = (&'a str, &'a str)>,
    add: impl IntoIterator<Item = (&'a str, &'a str)>,
    remove: &[String],
    at: &str,
) -> Result<HeaderOps, Invalid> {
    Ok(HeaderOps {
        set: header_pairs(set, &format!("{at}.set"))?,
        add: header_pairs(add, &format!("{at}.add"))?,
        remove: remove
            .iter()
            .enumerate()
            .map(|(i, name)| header_name(name, &format!("{at}.remove[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

/// A header condition (`invert` for Istio `withoutHeaders`).
pub fn header_match(
    name: &str,
    m: &CrdStringMatch,
    invert: bool,
    field: &str,
) -> Result<HeaderMatch, Invalid> {
    Ok(HeaderMatch {
        name: header_name(name, field)?,
        value: optional_string_match(m, field)?,
        invert,
    })
}
