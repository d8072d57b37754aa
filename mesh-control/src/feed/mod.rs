//! The gRPC feeds: node tunnels get workloads, services and policies incrementally
//! ([`node`]); waypoints get their routes, policies and services ([`waypoint`]). Both read
//! the [`hub::Hub`], which the store feeds with each new snapshot.

pub mod convert;
pub mod hub;
pub mod node;
pub mod state;
pub mod waypoint;

#[cfg(test)]
mod tests;
