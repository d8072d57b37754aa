//! Weft waypoint: the optional L7 proxy for services.
//!
//! - [`config`]: the local YAML configuration (domain types).
//! - [`route`]: route table, matching and rule actions.
//! - [`proxy`]: the request path, from downstream request to upstream response.
//! - [`destination`]: endpoints, subsets and per-destination state.
//! - [`resilience`]: timeouts, retries, faults, circuit breaking, outlier detection, load
//!   balancing and rate limiting, as tower layers.
//! - [`authn`]: request authentication (JWT), before authorization.
//! - [`authz`]: L7 authorization policy.
//! - [`telemetry`]: Istio metrics, trace propagation, access log.
//! - [`feed`]: feed mode: subscribing to mesh-control and converting its wire config.
//! - [`upstream`]: plain TCP or HBONE connections to endpoints.
//! - [`inbound`]: the HBONE front end; [`serve`]: downstream HTTP on any stream.
//! - [`ingress_tls`]: the HTTPS ingress listener, certificates chosen by SNI.
//! - [`identity`]: the waypoint's own certificate from mesh-control's CA.
//! - [`app`]: wiring listeners, drain and the proxy into a running waypoint.

pub mod app;
pub mod authn;
pub mod authz;
pub mod body;
pub mod config;
pub mod destination;
pub mod feed;
pub mod identity;
pub mod inbound;
pub mod ingress_tls;
pub mod proxy;
pub mod resilience;
pub mod rng;
pub mod route;
pub mod serve;
pub mod telemetry;
pub mod upstream;
