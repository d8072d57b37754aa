//! Resilience: small tower layers, one file each, plus the per-destination state they use.
//!
//! - [`timeout`]: overall request deadline (504 `UT`).
//! - [`retry`]: retries with per-try timeout, conditions, back-off and a retry budget.
//! - [`overrides`]: per-request overrides from Envoy's `x-envoy-*` headers.
//! - [`fault`]: delay/abort injection.
//! - [`circuit`]: circuit breaking on requests, pending requests and connections (503 `UO`).
//! - [`outlier`]: consecutive-failure ejection.
//! - [`lb`]: endpoint choice.
//! - [`ratelimit`]: local token bucket (429 `RL`).

pub mod circuit;
pub mod fault;
pub mod lb;
pub mod outlier;
pub mod overrides;
pub mod ratelimit;
pub mod retry;
pub mod timeout;
