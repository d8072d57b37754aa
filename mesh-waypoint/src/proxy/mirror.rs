//! Traffic mirroring (Istio `mirror` + `mirrorPercentage`): a copy of a percentage of requests
//! goes to another destination, fire-and-forget; its response is discarded and can neither
//! delay nor change the real response.
//!
//! The request body is teed as it streams to the real upstream, into a buffer of at most
//! [`MAX_MIRROR_BODY`] bytes; a larger body cancels the mirror rather than grow memory. At most
//! [`MAX_IN_FLIGHT`] mirrors run at once; beyond that, requests are not mirrored. As in Envoy,
//! the mirrored request's host gets a `-shadow` suffix.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{header::HOST, request::Parts, HeaderValue, Request};
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::forward::Attempt;
use crate::{
    body::{self, Body, BoxError},
    destination::Destination,
    rng::SharedRng,
};

/// Largest request body copied to a mirror.
pub const MAX_MIRROR_BODY: usize = 64 * 1024;
/// Most mirrors in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long a mirror may take, body wait included.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared mirror limits.
#[derive(Debug, Clone)]
pub struct Mirrors {
    slots: Arc<Semaphore>,
}

impl Default for Mirrors {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl Mirrors {
    /// Starts mirroring the request with head `parts`: returns the body to send upstream in
    /// place of `body` (same bytes, teed). Returns `body` untouched when no slot is free.
    pub fn start(
        &self,
        parts: &Parts,
        body: Body,
        dest: Arc<Destination>,
        subset: Option<String>,
        rng: SharedRng,
    ) -> Body {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(destination = %dest.name, "mirror skipped: too many in flight");
            return body;
        };
        let head = shadow_head(parts);
        let (tx, rx) = oneshot::channel();
        let teed = Tee::new(body, tx);
        tokio::spawn(send_mirror(head, rx, Attempt::new(dest, subset, rng), slot));
        body::boxed(teed)
    }
}

/// The mirrored request's head: same method, path, headers; host suffixed `-shadow`.
fn shadow_head(parts: &Parts) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    if let Some(shadow) = host.and_then(|h| HeaderValue::from_str(&shadow_host(&h)).ok()) {
        head.headers_mut().insert(HOST, shadow);
    }
    head
}

fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(']') || name.ends_with(']') => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

async fn send_mirror(
    head: Request<()>,
    body: oneshot::Receiver<Bytes>,
    attempt: Attempt,
    _slot: OwnedSemaphorePermit,
) {
    let run = async {
        // A dropped sender means the body was too large or the request was abandoned.
        let Ok(bytes) = body.await else { return };
        let req = head.map(|()| body::full(bytes));
        match attempt.oneshot(req).await {
            Ok(response) => tracing::debug!(status = response.status().as_u16(), "mirror answered"),
            Err(error) => tracing::debug!(%error, "mirror failed"),
        }
    };
    if tokio::time::timeout(MIRROR_TIMEOUT, run).await.is_err() {
        tracing::debug!("mirror timed out");
    }
}

/// A body that copies its data (up to the limit) and hands the copy over when it ends.
struct Tee {
    inner: Body,
    copy: BytesMut,
    done: Option<oneshot::Sender<Bytes>>,
}

impl Tee {
    fn new(inner: Body, done: oneshot::Sender<Bytes>) -> Self {
        let mut tee = Self {
            inner,
            copy: BytesMut::new(),
            done: Some(done),
        };
        // A body that is already complete may never be polled: hand over the empty copy now.
        if tee.inner.is_end_stream() {
            tee.finish();
        }
        tee
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(std::mem::take(&mut self.copy).freeze());
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if self.copy.len() + data.len() > MAX_MIRROR_BODY {
                        // Too large to mirror: cancel it, keep streaming the real request.
                        self.done = None;
                        self.copy = BytesMut::new();
                    } else if self.done.is_some() {
                        self.copy.extend_from_slice(data);
                    }
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.done = None,
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            self.finish();
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
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn shadow_host_table() {
        for (input, want) in [
            ("reviews", "reviews-shadow"),
            ("reviews:9080", "reviews-shadow:9080"),
            ("[::1]:80", "[::1]-shadow:80"),
        ] {
            assert_eq!(shadow_host(input), want);
        }
    }

    #[tokio::test]
    async fn tee_copies_small_bodies_and_passes_data_through() {
        let (tx, rx) = oneshot::channel();
        let tee = Tee::new(body::full("hello"), tx);
        let passed = tee.collect().await.expect("body").to_bytes();
        assert_eq!(passed, Bytes::from_static(b"hello"));
        assert_eq!(rx.await.expect("copy"), Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn tee_cancels_the_mirror_for_large_bodies() {
        let (tx, rx) = oneshot::channel();
        let big = vec![b'x'; MAX_MIRROR_BODY + 1];
        let tee = Tee::new(body::full(big.clone()), tx);
        let passed = tee.collect().await.expect("body").to_bytes();
        assert_eq!(passed.len(), big.len(), "the real request is unaffected");
        assert!(rx.await.is_err(), "mirror cancelled");
    }

    #[tokio::test]
    async fn tee_hands_over_empty_bodies_at_once() {
        let (tx, rx) = oneshot::channel();
        let _tee = Tee::new(body::empty(), tx);
        assert_eq!(rx.await.expect("copy"), Bytes::new());
    }
}
