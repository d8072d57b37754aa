//! The local lab: a multi-node "cluster" of network namespaces and cgroups.

pub mod cgroup;
pub mod netns;
pub mod topology;

pub use topology::{Lab, LabSpec, Node, Pod, PodSpec};
