//! One tunnelled connection (an HTTP/2 `CONNECT` stream) as a byte stream.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
};

/// A `CONNECT` stream after the 200: read and write the peer's bytes. Shutting down the write
/// side sends END_STREAM (TCP half-close through the tunnel). On the client side, dropping it
/// frees its slot on the pooled connection.
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    _slot: Option<StreamSlot>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

impl Tunnel {
    pub(crate) fn new(upgraded: Upgraded, slot: Option<StreamSlot>) -> Self {
        Self {
            io: TokioIo::new(upgraded),
            _slot: slot,
        }
    }
}

/// Holds one stream slot of a pooled connection; released on drop.
#[derive(Debug)]
pub(crate) struct StreamSlot(pub(crate) Arc<watch::Sender<usize>>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .send_modify(|active| *active = active.saturating_sub(1));
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
