//! Feed mode: the waypoint's configuration comes from mesh-control's `WaypointFeed`.
//!
//! - [`client`]: subscribes (resume by feed id and version, jittered bounded backoff), keeps the
//!   last good configuration while control is unreachable, and hands each version on.
//! - [`convert`]: the pure conversion from the wire `WaypointConfig` into the domain
//!   [`WaypointConfig`](crate::config::WaypointConfig). Pieces that do not convert fail closed:
//!   a broken route answers 503, a broken policy denies; nothing is silently widened.
//! - [`saved`]: a waypoint feed saved as a file (`mesh-control dump --waypoint`), converted the
//!   same way.
//!
//! Virtual hosts built from the feed are keyed `<name>:<port>` for every service name (FQDN and
//! short names) and `<vip>:<port>` for every VIP; HBONE requests select them by their CONNECT
//! authority (`vip:port`). Destinations are named `<service fqdn>:<service port>`. Workloads
//! bound to this waypoint themselves (`istio.io/use-waypoint` on the pod) also get
//! `<pod ip>:<target port>` virtual hosts straight to that pod.

pub mod client;
pub mod convert;
mod pods;
pub mod reload;
mod routes;
mod rules;
pub mod saved;
mod services;

pub use self::{
    client::{FeedClientConfig, FeedStatus},
    convert::{convert, ConvertError, Converted, WaypointName},
    reload::Reloader,
};

#[cfg(test)]
mod tests;
