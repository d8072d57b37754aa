//! Operations endpoints: Prometheus metrics (15020), readiness (15021) and the localhost admin
//! endpoint (15000 `/config_dump`). Small HTTP/1 servers, each under the drain.

use std::{convert::Infallible, future::Future, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh_core::drain::DrainWatch;
use tokio::net::TcpListener;

/// Bound on reading a request's head from an operator or scraper.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers a path; `None` is 404.
pub type Route = Arc<dyn Fn(&str) -> Option<(StatusCode, &'static str, String)> + Send + Sync>;

/// Serves `route` on `listener` until `drain`.
pub async fn serve(listener: TcpListener, route: Route, mut drain: DrainWatch) {
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let route = route.clone();
        let watch = drain.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, route.clone()));
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            with_drain(conn, watch).await;
        });
    }
}

async fn with_drain<C>(conn: C, mut drain: DrainWatch)
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    // Ops requests are short; on drain just stop serving this connection.
    tokio::select! {
        _ = conn => {}
        _ = drain.signaled() => {}
    }
}

fn respond(
    req: Request<Incoming>,
    route: Route,
) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> {
    let (status, content_type, body) = route(req.uri().path()).unwrap_or((
        StatusCode::NOT_FOUND,
        "text/plain",
        "not found\n".into(),
    ));
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    std::future::ready(Ok(response))
}
