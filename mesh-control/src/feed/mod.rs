//! The gRPC feeds: node tunnels get workloads, services and policies incrementally
//! ([`node`]); waypoints get their routes, policies and services ([`waypoint`]). Both read
//! the [`hub::Hub`], which the store feeds with each new snapshot. The node feed is served by
//! [`node_server::NodeFeedServer`] with full syncs encoded once ([`full_sync`]).

pub mod convert;
pub mod full_sync;
pub mod hub;
pub mod ingress;
pub mod node;
pub mod node_server;
pub mod state;
pub mod waypoint;

#[cfg(test)]
mod tests;
