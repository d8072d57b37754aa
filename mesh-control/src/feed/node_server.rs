//! The `weft.control.v1.NodeFeed` gRPC service, hand-wired instead of generated so that streams
//! send already-encoded messages: full syncs are encoded once and shared (see [`super::full_sync`]).
//! The wire format is unchanged; clients use the generated `NodeFeedClient`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::proto::control::v1 as pb;
use prost::bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::node::{EncodedStream, NodeFeedService};

const SUBSCRIBE: &str = "/weft.control.v1.NodeFeed/Subscribe";

/// Decodes `NodeSubscribeRequest`s; encodes messages that are already bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeedCodec;

/// Writes pre-encoded message bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncoded;

/// Decodes subscribe requests with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestDecoder;

impl Codec for FeedCodec {
    type Encode = Bytes;
    type Decode = pb::NodeSubscribeRequest;
    type Encoder = PreEncoded;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RequestDecoder {
    type Item = pb::NodeSubscribeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::NodeSubscribeRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("invalid subscribe request: {e}")))
    }
}

/// The node feed as a tower service for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub struct NodeFeedServer {
    inner: Arc<NodeFeedService>,
}

impl NodeFeedServer {
    /// Serves `service`.
    pub fn new(service: NodeFeedService) -> Self {
        Self {
            inner: Arc::new(service),
        }
    }
}

impl NamedService for NodeFeedServer {
    const NAME: &'static str = pb::node_feed_server::SERVICE_NAME;
}

/// `Subscribe` as tonic's server-streaming service.
struct Subscribe(Arc<NodeFeedService>);

impl Service<Request<pb::NodeSubscribeRequest>> for Subscribe {
    type Response = Response<EncodedStream>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<pb::NodeSubscribeRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.subscribe(request).await })
    }
}

fn unimplemented() -> http::Response<tonic::body::Body> {
    Status::unimplemented("unknown method of weft.control.v1.NodeFeed").into_http()
}

impl<B> Service<http::Request<B>> for NodeFeedServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SUBSCRIBE {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let method = Subscribe(Arc::clone(&self.inner));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(FeedCodec);
            Ok(grpc.server_streaming(method, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::auth::TokenAuthenticator;
    use crate::feed::hub::Hub;
    use crate::feed::node::StreamSettings;

    #[tokio::test]
    async fn unknown_methods_are_unimplemented() {
        let hub = Arc::new(Hub::with_feed_id("f".into(), 10));
        let auth = Arc::new(TokenAuthenticator::default());
        let (_trigger, watch) = mesh_core::drain::channel();
        let service = NodeFeedService::new(hub, auth, StreamSettings::default(), watch);
        let request = http::Request::post("/weft.control.v1.NodeFeed/Unsubscribe")
            .body(tonic::body::Body::empty())
            .expect("request");
        let response = NodeFeedServer::new(service)
            .oneshot(request)
            .await
            .expect("infallible");
        let status = Status::from_header_map(response.headers()).expect("grpc status");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
}
