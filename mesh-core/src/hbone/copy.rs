//! Copying a connection's bytes both ways (a tunnel and a socket, or two sockets), with a buffer
//! per direction sized by the traffic.
//!
//! - A direction has no buffer while its source has nothing to read: an idle connection holds
//!   no copy memory at all, whatever it carried before.
//! - A buffer starts at [`MIN_BUFFER`]. A read that fills it doubles the next one, up to
//!   [`MAX_BUFFER`]; a read that uses under an eighth halves it. Bulk transfers so move in few,
//!   large writes (fewer HTTP/2 frames, wake-ups and syscalls), requests and responses in small
//!   buffers.
//! - Half-close is propagated: end of stream on one side shuts down the other's write half, and
//!   the other direction goes on until it ends too.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

/// Smallest (and first) buffer of a direction.
pub const MIN_BUFFER: usize = 16 * 1024;
/// Largest buffer of a direction: the bound on copy memory per connection is twice this.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Copies both ways until both directions have ended; returns the bytes copied (a to b, b to a).
/// The first error of either direction ends the copy.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, &mut *a, &mut *b)?;
        let backward = b_to_a.poll_copy(cx, &mut *b, &mut *a)?;
        match (forward, backward) {
            (Poll::Ready(sent), Poll::Ready(received)) => Poll::Ready(Ok((sent, received))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction's state.
#[derive(Debug)]
struct Direction {
    /// Read but not yet written; `None` while there is nothing to hold.
    buf: Option<BytesMut>,
    /// Capacity of the next buffer.
    size: usize,
    read_done: bool,
    /// Written since the last flush.
    need_flush: bool,
    /// Shut down the writer: this direction is over.
    done: bool,
    copied: u64,
}

impl Default for Direction {
    fn default() -> Self {
        Self {
            buf: None,
            size: MIN_BUFFER,
            read_done: false,
            need_flush: false,
            done: false,
            copied: 0,
        }
    }
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            if self.is_empty() && !self.read_done {
                let buf = self.fresh_buffer();
                match poll_read_buf(Pin::new(&mut *reader), cx, buf) {
                    Poll::Pending => {
                        // Nothing to forward: push out what was written, then hold no memory.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        self.buf = None;
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Ready(Ok(0)) => self.read_done = true,
                    Poll::Ready(Ok(read)) => self.adapt(read),
                }
            }
            while let Some(buf) = self.buf.as_mut().filter(|buf| !buf.is_empty()) {
                let written = ready!(Pin::new(&mut *writer).poll_write(cx, buf))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                buf.advance(written);
                self.copied += written as u64;
                self.need_flush = true;
            }
            if self.read_done {
                if self.need_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.buf = None;
                self.done = true;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.as_ref().is_none_or(BytesMut::is_empty)
    }

    /// An empty buffer of the current size: the held one when it fits (its space is reclaimed
    /// once everything was written), else a new one.
    fn fresh_buffer(&mut self) -> &mut BytesMut {
        let size = self.size;
        let buf = self
            .buf
            .get_or_insert_with(|| BytesMut::with_capacity(size));
        buf.clear();
        // Reclaims the consumed space without copying (nothing is left), or grows.
        buf.reserve(size);
        if buf.capacity() > 2 * size {
            *buf = BytesMut::with_capacity(size);
        }
        buf
    }

    /// Sizes the next buffer after a read of `read` bytes.
    fn adapt(&mut self, read: usize) {
        let capacity = self.buf.as_ref().map_or(0, BytesMut::capacity);
        if read >= capacity.min(self.size) {
            self.size = (self.size * 2).min(MAX_BUFFER);
        } else if read <= self.size / 8 {
            self.size = (self.size / 2).max(MIN_BUFFER);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn carries_both_ways_and_propagates_half_close() {
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        let (mut b, mut server) = tokio::io::duplex(64 * 1024);
        let copy = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b).await });
        let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = upload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&upload).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert!(received == expected, "the upload arrived changed");
        // The server answers after the client's half-close, which reached it as EOF.
        server.write_all(b"thanks").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"thanks");
        let (sent, back) = copy.await.unwrap().unwrap();
        assert_eq!((sent, back), (3_000_000, 6));
    }

    #[tokio::test]
    async fn errors_end_the_copy() {
        let (client, mut a) = tokio::io::duplex(1024);
        let (mut b, server) = tokio::io::duplex(1024);
        drop(server);
        let mut client = client;
        client.write_all(b"to nobody").await.unwrap();
        let result = copy_bidirectional(&mut a, &mut b).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn buffers_grow_with_bulk_and_shrink_with_small_reads() {
        let mut direction = Direction::default();
        direction.fresh_buffer();
        direction.adapt(MIN_BUFFER);
        assert_eq!(direction.size, 2 * MIN_BUFFER);
        for _ in 0..20 {
            let capacity = direction.fresh_buffer().capacity();
            direction.adapt(capacity);
        }
        assert_eq!(direction.size, MAX_BUFFER, "growth stops at the maximum");
        assert!(direction.fresh_buffer().capacity() <= 2 * MAX_BUFFER);
        for _ in 0..20 {
            direction.fresh_buffer();
            direction.adapt(100);
        }
        assert_eq!(direction.size, MIN_BUFFER, "small reads bring it back down");
        assert!(direction.fresh_buffer().capacity() <= 2 * MIN_BUFFER);
        // A read between an eighth and all of the buffer keeps its size.
        direction.fresh_buffer();
        direction.adapt(MIN_BUFFER / 2);
        assert_eq!(direction.size, MIN_BUFFER);
    }

    #[test]
    fn an_idle_direction_holds_no_buffer() {
        let (mut client, mut a) = tokio::io::duplex(1 << 20);
        let (mut b, _server) = tokio::io::duplex(1 << 20);
        let mut direction = Direction::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut poll = |direction: &mut Direction| direction.poll_copy(&mut cx, &mut a, &mut b);
        assert!(poll(&mut direction).is_pending());
        assert!(direction.buf.is_none(), "nothing read: no buffer");

        let mut cx = Context::from_waker(Waker::noop());
        let big = vec![7u8; 300 * 1024];
        assert!(Pin::new(&mut client).poll_write(&mut cx, &big).is_ready());
        let mut poll = |direction: &mut Direction| direction.poll_copy(&mut cx, &mut a, &mut b);
        assert!(poll(&mut direction).is_pending());
        assert_eq!(direction.copied, 300 * 1024);
        assert!(
            direction.size > MIN_BUFFER,
            "a bulk read grows the next buffer"
        );
        assert!(
            direction.buf.is_none(),
            "once everything is written and the source is idle, the buffer is released"
        );
    }
}
