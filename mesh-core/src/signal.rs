//! Process signals that ask a Weft binary to stop.
//!
//! Install the handlers with [`ShutdownSignals::install`] first thing in `main`, before any
//! slow start-up work: until a handler is installed, SIGTERM's default action kills the process
//! outright, skipping the drain.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGTERM: what Kubernetes sends before killing a pod.
    Terminate,
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
}

/// Installed SIGTERM and SIGINT handlers; signals that arrive before [`Self::recv`] are kept.
#[derive(Debug)]
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers now. Fails only outside a Tokio runtime with signal support.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves when SIGTERM or SIGINT arrives (or has arrived since `install`).
    pub async fn recv(&mut self) -> ShutdownSignal {
        tokio::select! {
            _ = self.terminate.recv() => ShutdownSignal::Terminate,
            _ = self.interrupt.recv() => ShutdownSignal::Interrupt,
        }
    }
}

/// Installs the handlers and waits. Prefer [`ShutdownSignals::install`] early in `main`.
pub async fn shutdown_requested() -> std::io::Result<ShutdownSignal> {
    Ok(ShutdownSignals::install()?.recv().await)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_signal_sent_before_recv_is_not_lost() {
        let mut signals = ShutdownSignals::install().unwrap();
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let received = tokio::time::timeout(Duration::from_secs(5), signals.recv()).await;
        assert_eq!(
            received.expect("signal delivered"),
            ShutdownSignal::Terminate
        );
    }
}
