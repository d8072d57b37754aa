//! Workload identity: SPIFFE IDs, workload certificates and the CA primitive that issues them.
//!
//! - [`SpiffeId`]: a strictly validated `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//! - [`cert`]: workload certificate + key ([`WorkloadCert`]) and CSR generation.
//! - [`ca`]: [`ca::CertificateAuthority`], which signs CSRs for one identity each.
//! - [`source`]: [`CertificateSource`], how a component obtains certificates; the in-process CA
//!   (tests, static mode) is [`InProcessSource`], the control plane's CA service [`GrpcSource`].

pub mod ca;
pub mod cert;
pub mod grpc;
pub mod source;
mod spiffe;

pub use cert::{CertError, CsrAndKey, WorkloadCert};
pub use grpc::GrpcSource;
pub use source::{CertificateSource, InProcessSource, SourceError};
pub use spiffe::{IdentityError, SpiffeId};
