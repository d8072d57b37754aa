//! The waypoint's local configuration: routes, destinations, policies, as YAML.
//!
//! These are Weft's own domain types, shaped so that both Istio (`VirtualService` +
//! `DestinationRule` + `AuthorizationPolicy`) and Gateway API (`HTTPRoute`) map onto them
//! (mesh-control translates those resources once, into the waypoint feed):
//! match blocks are OR'ed and the fields inside one block AND'ed (Istio `HTTPMatchRequest`,
//! Gateway `HTTPRouteMatch`), rules are evaluated first-match in order, and a route action is a
//! weighted list of (destination, subset) pairs where a subset selects endpoints by labels.
//! The waypoint feed converts into these types at its boundary ([`crate::feed`]).

mod destination;
mod route;

use std::{fmt, path::Path, time::Duration};

use mesh_core::authz::PathNormalization;
use serde::{Deserialize, Deserializer};

pub use self::{destination::*, route::*};

/// Errors loading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read waypoint config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the schema.
    #[error("invalid waypoint config {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// A duration written in human form (`250ms`, `5s`, `1m`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("bad duration {text:?}: {e}")))
    }
}

/// The whole waypoint configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaypointConfig {
    /// Virtual hosts with their ordered rules.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Upstream services: endpoints, subsets and traffic policy.
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    /// How request paths are normalized before routing and policy (Istio's `pathNormalization`
    /// names; `MERGE_SLASHES` when absent).
    #[serde(default, deserialize_with = "path_normalization")]
    pub path_normalization: PathNormalization,
    /// Local (per-waypoint) rate limit applied to every request; none when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Feed mode: virtual hosts for the plain (ingress) listener, selected by `Host`; `routes`
    /// then serve HBONE only, selected by CONNECT authority. `None` (static mode): `routes`
    /// serve the plain listener. Never read from YAML.
    #[serde(skip)]
    pub ingress_routes: Option<Vec<RouteConfig>>,
    /// Authorization policies with their scope, converted from the feed's messages (a live
    /// feed or a saved one, `--feed-file`); never read from this YAML.
    #[serde(skip)]
    pub scoped_policies: Vec<crate::authz::ScopedPolicy>,
    /// Request authentication with its scope (feed mode; never read from YAML).
    #[serde(skip)]
    pub request_authn: Vec<crate::authn::ScopedAuthn>,
}

impl WaypointConfig {
    /// Reads and parses a YAML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: display,
            source,
        })
    }

    /// Parses YAML text.
    pub fn parse(text: &str) -> Result<Self, serde_yaml::Error> {
        from_yaml(text)
    }
}

fn path_normalization<'de, D: Deserializer<'de>>(d: D) -> Result<PathNormalization, D::Error> {
    let text = String::deserialize(d)?;
    PathNormalization::parse(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown path_normalization {text:?}: expected NONE, BASE, MERGE_SLASHES or \
             DECODE_AND_MERGE_SLASHES"
        ))
    })
}

/// Parses any config type from YAML, writing enums as one-key maps (`path: {prefix: /api}`)
/// rather than YAML tags.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_yaml::Error> {
    serde_yaml::with::singleton_map_recursive::deserialize(serde_yaml::Deserializer::from_str(text))
}

/// Local token-bucket rate limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Bucket size.
    pub max_tokens: u32,
    /// Tokens added every `fill_interval`.
    pub tokens_per_fill: u32,
    /// Refill period.
    pub fill_interval: HumanDuration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_compiles() {
        let config = WaypointConfig::parse(include_str!("../../examples/waypoint.yaml"))
            .expect("example parses");
        assert_eq!(config.routes[0].rules.len(), 3);
        crate::route::RouteTable::new(&config.routes, &config.destinations)
            .expect("routes compile");
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let cases = [
            (
                "routes: [{name: r, hosts: [a], rules: [], hostz: [b]}]",
                "hostz",
            ),
            (
                "routes: [{name: r, hosts: [a], rules: [{timeout: 5 parsecs, route: []}]}]",
                "bad duration",
            ),
            (
                "destinations: [{name: d, endpoints: [{address: not-an-addr}]}]",
                "address",
            ),
        ];
        for (yaml, needle) in cases {
            let err = WaypointConfig::parse(yaml).expect_err(yaml).to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }
}
