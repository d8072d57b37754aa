//! Forwards `aya-log` records from the programs to `tracing`.
//!
//! aya-log 0.3 hands records to a `log::Log` and must be polled by the caller: the ring buffer's
//! fd is registered with tokio's `AsyncFd` and drained whenever it becomes readable.

use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

/// A `log::Log` that re-emits records as `tracing` events with target `weft::ebpf`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        let program = record.target();
        match record.level() {
            log::Level::Error => tracing::error!(target: "weft::ebpf", program, "{message}"),
            log::Level::Warn => tracing::warn!(target: "weft::ebpf", program, "{message}"),
            log::Level::Info => tracing::info!(target: "weft::ebpf", program, "{message}"),
            log::Level::Debug => tracing::debug!(target: "weft::ebpf", program, "{message}"),
            log::Level::Trace => tracing::trace!(target: "weft::ebpf", program, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Spawns the task draining `logger` on the current tokio runtime; abort the handle to stop it.
pub fn spawn(logger: EbpfLogger<TracingLog>) -> std::io::Result<JoinHandle<()>> {
    // SAFETY: the logger owns its ring buffer map fd, which stays open and unchanged until the
    // logger (moved into the AsyncFd) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => {
                    tracing::warn!(%error, "ebpf log ring buffer unreadable, stopping forwarding");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
