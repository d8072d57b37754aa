//! The body type the proxy passes around: a boxed, streaming body, never buffered whole.
//!
//! A newtype rather than an alias: keeping the trait object's lifetime out of generic bounds
//! avoids rustc's "implementation of `Send` is not general enough" on async blocks.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Errors carried by streaming bodies (upstream resets, downstream disconnects).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy's body type.
#[derive(Debug)]
pub struct Body(UnsyncBoxBody<Bytes, BoxError>);

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A body with no data.
pub fn empty() -> Body {
    Body(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// A body with fixed content (local answers only).
pub fn full(data: impl Into<Bytes>) -> Body {
    Body(
        Full::new(data.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// Boxes any streaming body, e.g. hyper's `Incoming`.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Body(body.map_err(Into::into).boxed_unsync())
}

/// Ties a guard (a permit, an in-flight counter) to a body: it is released when the body is
/// finished or dropped, not when the headers arrive.
pub fn with_guard<G: Send + 'static>(body: Body, guard: G) -> Body {
    Body(
        body.0
            .map_err(move |e| {
                let _held = &guard;
                e
            })
            .boxed_unsync(),
    )
}

/// Counts the data bytes that pass through a body into `counter`, keeping its size hint (so
/// retries can still see a small, replayable body).
pub fn counted(body: Body, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Body {
    Body(
        Counted {
            inner: body,
            counter,
        }
        .boxed_unsync(),
    )
}

struct Counted {
    inner: Body,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter
                    .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::AtomicU64, Arc};

    use super::*;

    #[tokio::test]
    async fn counted_counts_and_keeps_the_size_hint() {
        let counter = Arc::new(AtomicU64::new(0));
        let body = counted(full("hello"), counter.clone());
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(collected, Bytes::from_static(b"hello"));
        assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 5);
    }
}
