//! Harness shared by Weft's cross-component tests and the local lab (`cargo xtask demo`).
//!
//! - [`lab`]: nodes and pods as network namespaces and cgroups on one machine, torn down on drop.
//! - [`mesh`]: the sample mesh (control, nodes, app) on a lab, for the demo and e2e tests.
//! - [`wait`]: bounded polling for processes that start asynchronously.
//! - [`bins`]: paths of the workspace's binaries, for tests that run them as processes.

pub mod bins;
pub mod lab;
pub mod mesh;
pub mod wait;
