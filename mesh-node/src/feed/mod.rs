//! The node's subscription to mesh-control's `NodeFeed`.
//!
//! - [`store`]: applies the update stream (chunked versions, resets, removals) and publishes a
//!   consistent [`MeshSnapshot`] only when a version is complete.
//! - [`client`]: keeps the subscription alive: connects with a timeout, resumes from the last
//!   complete version after a disconnect, backs off with jitter, and keeps the last snapshot in
//!   force while mesh-control is unreachable.
//!
//! Snapshots still hold wire types; [`convert`] turns one into the node's mesh description.
//! [`saved`]: a node feed saved as a file (`mesh-control dump --node`), applied the same way.

pub mod client;
pub mod convert;
pub mod saved;
pub mod store;

pub use client::{run, FeedClientConfig, FeedStatus};
pub use store::{FeedError, FeedStore, MeshSnapshot};

#[cfg(test)]
mod tests;
