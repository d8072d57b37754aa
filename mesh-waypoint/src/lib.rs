//! Weft waypoint: the optional L7 proxy for services.
//!
//! - [`config`]: the local YAML configuration (domain types).
//! - [`route`]: route table, matching and rule actions.
//! - [`proxy`]: the request path, from downstream request to upstream response.
//! - [`destination`]: endpoints, subsets and per-destination state.
//! - [`resilience`]: timeouts, retries, faults, circuit breaking, outlier detection, load
//!   balancing and rate limiting, as tower layers.
//! - [`authz`]: L7 authorization policy.
//! - [`telemetry`]: Istio metrics, trace propagation, access log.
//! - [`translate`]: Istio `VirtualService`/`DestinationRule` and Gateway API `HTTPRoute` into
//!   the domain types.
//! - [`app`]: wiring listeners, drain and the proxy into a running waypoint.

pub mod app;
pub mod authz;
pub mod body;
pub mod config;
pub mod destination;
pub mod proxy;
pub mod resilience;
pub mod rng;
pub mod route;
pub mod telemetry;
pub mod translate;
