//! The server side of mesh-control's TLS gRPC port: accepted TCP connections go through a TLS
//! handshake (bounded in time, in how many run at once, and in how many one source address may
//! hold) before tonic sees them. A failed handshake is logged and dropped; it never stops the
//! listener, and one address opening idle connections cannot take every handshake slot.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::drain::DrainWatch;

/// Limits of the TLS front of a gRPC listener, and its failure counter.
#[derive(Debug, Clone)]
pub struct TlsIncomingSettings {
    /// Longest a client may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; accepting pauses beyond it.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source address; more are closed at once.
    pub max_handshakes_per_source: usize,
    /// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
    pub accept_error_pause: Duration,
    /// Counts handshakes that failed or timed out (register it to expose it).
    pub handshake_failures: Counter,
}

impl Default for TlsIncomingSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 128,
            max_handshakes_per_source: 8,
            accept_error_pause: Duration::from_millis(100),
            handshake_failures: Counter::default(),
        }
    }
}

/// One TLS connection accepted for tonic.
#[derive(Debug)]
pub struct TlsServerStream(TlsStream<TcpStream>);

/// Serves `listener` as TLS with `config` until `drain` fires: the returned stream yields each
/// connection whose handshake completed, for `serve_with_incoming_shutdown`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    settings: TlsIncomingSettings,
    mut drain: DrainWatch,
) -> ReceiverStream<io::Result<TlsServerStream>> {
    // Small: tonic takes connections as fast as they come; this only decouples the tasks.
    let (accepted, incoming) = mpsc::channel(16);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(settings.max_handshakes));
    let sources = Arc::new(std::sync::Mutex::new(HashMap::new()));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = drain.signaled() => return,
                permit = Arc::clone(&handshakes).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (tcp, peer) = tokio::select! {
                _ = drain.signaled() => return,
                result = listener.accept() => match result {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!(%error, "grpc accept failed");
                        tokio::time::sleep(settings.accept_error_pause).await;
                        continue;
                    }
                },
            };
            let Some(source_slot) =
                SourceSlot::take(&sources, peer.ip(), settings.max_handshakes_per_source)
            else {
                handshake_failed(
                    &settings.handshake_failures,
                    peer,
                    &"too many handshakes from this address",
                );
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let accepted = accepted.clone();
            let failures = settings.handshake_failures.clone();
            let handshake_timeout = settings.handshake_timeout;
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return handshake_failed(&failures, peer, &error),
                    Err(_) => return handshake_failed(&failures, peer, &"timed out"),
                };
                drop((permit, source_slot));
                let _ = accepted.send(Ok(TlsServerStream(stream))).await;
            });
        }
    });
    ReceiverStream::new(incoming)
}

type SourceCounts = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// One handshake counted against its source address until dropped.
struct SourceSlot {
    counts: SourceCounts,
    ip: IpAddr,
}

impl SourceSlot {
    /// A slot for `ip`, unless it already holds `max`.
    fn take(counts: &SourceCounts, ip: IpAddr, max: usize) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn handshake_failed(failures: &Counter, peer: SocketAddr, error: &dyn std::fmt::Display) {
    failures.inc();
    // Debug, not warn: anything on the network can open a connection and hang up.
    tracing::debug!(%peer, %error, "grpc tls handshake failed");
}

impl Connected for TlsServerStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsServerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsServerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
