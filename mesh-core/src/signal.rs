//! Process signals that ask a Weft binary to stop.

use tokio::signal::unix::{signal, SignalKind};

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGTERM: what Kubernetes sends before killing a pod.
    Terminate,
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
}

/// Resolves when SIGTERM or SIGINT arrives.
///
/// Fails only if the signal handlers cannot be installed, which happens when called outside a
/// Tokio runtime with signal support.
pub async fn shutdown_requested() -> std::io::Result<ShutdownSignal> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok(ShutdownSignal::Terminate),
        _ = int.recv() => Ok(ShutdownSignal::Interrupt),
    }
}
