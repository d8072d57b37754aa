//! Code shared by more than one Weft component.
//!
//! - [`drain`]: graceful-drain primitive every listener runs under.
//! - [`telemetry`]: `tracing` set-up (plain or JSON logs) shared by the binaries.
//! - [`signal`]: waits for SIGTERM/SIGINT so binaries shut down cleanly.

pub mod drain;
pub mod signal;
pub mod telemetry;
