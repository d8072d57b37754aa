//! What a route rule does besides forwarding (answer, rewrite, header edits, faults, mirror),
//! and the connection settings of a traffic policy.

use std::collections::BTreeMap;
use std::time::Duration;

/// A share of requests, in parts per million (exact, so the model stays comparable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percentage(u32);

impl Percentage {
    /// Every request.
    pub const ALL: Self = Self(1_000_000);

    /// From a percentage (0-100, fractional allowed); `None` when out of range or not a number.
    pub fn from_percent(value: f64) -> Option<Self> {
        if !(0.0..=100.0).contains(&value) {
            return None;
        }
        // In range, so the product is within 0..=1e6 and the cast cannot truncate.
        Some(Self((value * 10_000.0).round() as u32))
    }

    /// From a fraction; `None` when the denominator is not positive or the fraction is over 1.
    pub fn from_fraction(numerator: i32, denominator: i32) -> Option<Self> {
        let (n, d) = (
            u64::try_from(numerator).ok()?,
            u64::try_from(denominator).ok()?,
        );
        if d == 0 || n > d {
            return None;
        }
        u32::try_from(n * 1_000_000 / d).ok().map(Self)
    }

    /// As a percentage, 0-100.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

/// How a path is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// Replace the whole path.
    Full(String),
    /// Replace the matched prefix (the whole path when the match was not a prefix).
    Prefix(String),
}

/// A redirect answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// New path; the request's when absent.
    pub path: Option<PathRewrite>,
    /// New authority; the request's when absent.
    pub authority: Option<String>,
    /// Scheme; the request's when absent.
    pub scheme: Option<String>,
    /// Port of the location.
    pub port: Option<u16>,
    /// Status code (301, 302, 303, 307 or 308).
    pub code: u16,
}

/// A fixed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    /// Status code, 200-599.
    pub status: u16,
    /// Body text.
    pub body: String,
}

/// Answer instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A redirect.
    Redirect(Redirect),
    /// A fixed response.
    Direct(DirectResponse),
}

/// Rewrite before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// New path.
    pub path: Option<PathRewrite>,
    /// New authority.
    pub authority: Option<String>,
}

/// Header edits, applied as remove, then set, then add (lowercase names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Overwrite.
    pub set: BTreeMap<String, String>,
    /// Append.
    pub add: BTreeMap<String, String>,
    /// Remove.
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Fault injection; each part applies to its share of requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    /// Delay, and the share delayed.
    pub delay: Option<(Duration, Percentage)>,
    /// Abort status, and the share aborted.
    pub abort: Option<(u16, Percentage)>,
}

/// Request mirroring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Service FQDN.
    pub host: String,
    /// Port; the request's when absent.
    pub port: Option<u16>,
    /// DestinationRule subset.
    pub subset: Option<String>,
    /// Share of requests copied.
    pub percentage: Percentage,
}

/// Connection limits; `None` fields use the waypoint's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    /// Maximum connections.
    pub max_connections: Option<u32>,
    /// Maximum queued requests.
    pub max_pending_requests: Option<u32>,
    /// Maximum concurrent requests.
    pub max_requests: Option<u32>,
    /// Connect timeout.
    pub connect_timeout: Option<Duration>,
}

/// Consistent-hash key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsistentHash {
    /// A request header (lowercase).
    Header(String),
    /// A cookie.
    Cookie(String),
}
