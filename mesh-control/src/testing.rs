//! Test helpers: serve a tonic router over an in-memory `tokio::io::duplex` pipe and connect a
//! real tonic client to it.

use hyper_util::rt::TokioIo;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Uri};

/// Serves `router` on one in-memory connection and returns a client channel for it.
pub async fn serve_in_memory(router: Router) -> Channel {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let incoming = tokio_stream::once(Ok::<_, std::io::Error>(server_io));
    tokio::spawn(router.serve_with_incoming(incoming));
    let mut client_io = Some(client_io);
    Endpoint::from_static("http://in-memory")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let io = client_io.take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("in-memory connection already used"))
            }
        }))
        .await
        .expect("in-memory channel")
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}
