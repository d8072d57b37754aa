//! The control-plane protocol: protobuf messages and gRPC clients/servers generated from
//! `mesh-core/proto/weft/control/v1/*.proto` by `build.rs`.
//!
//! - `NodeFeed.Subscribe`: incremental workload/service/policy stream for node tunnels.
//! - `WaypointFeed.Subscribe`: routes, policies and services for one waypoint.
//! - `CertificateService.CreateCertificate`: the mesh CA.
//!
//! Wire types stop at the component boundary: convert them into domain types where they enter.

/// An address as the protocol carries it (`bytes` fields): 4 bytes for IPv4, 16 for IPv6.
pub fn address_bytes(ip: &std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Package `weft.control.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    unused_qualifications
)]
pub mod control {
    /// Version 1 of the protocol.
    pub mod v1 {
        tonic::include_proto!("weft.control.v1");
        // Serde in the proto3 JSON mapping (camelCase names, enums by name, bytes as base64,
        // 64-bit integers as strings); unknown fields are refused.
        include!(concat!(env!("OUT_DIR"), "/weft.control.v1.serde.rs"));
    }
}

pub mod build;
