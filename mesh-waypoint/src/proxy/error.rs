//! Why a request did not get an upstream response, and the one place that turns each cause
//! into a status code and an Envoy-style response flag.

use std::{net::SocketAddr, time::Duration};

use http::{header::CONTENT_TYPE, HeaderValue, Response, StatusCode};

use crate::{
    body::{self, Body, BoxError},
    resilience::circuit::CircuitError,
    route::RouteError,
};

/// A request failure, by cause.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No `Host`/`:authority` on the request.
    #[error("request has no host or authority")]
    MissingHost,
    /// The path cannot be normalized safely (escaped slash, NUL, bad escape, fragment).
    #[error("request path refused: {0}")]
    BadPath(#[from] mesh_core::authz::PathError),
    /// No route for the host and request.
    #[error("no route for host {host:?} path {path:?}")]
    NoRoute { host: String, path: String },
    /// The destination has no endpoint that is up and not ejected.
    #[error("no healthy endpoint for destination {destination:?} subset {subset:?}")]
    NoHealthyUpstream {
        destination: String,
        subset: Option<String>,
    },
    /// A circuit-breaker cap was hit.
    #[error("{0}")]
    Overflow(CircuitError),
    /// TCP connect to the endpoint failed.
    #[error("connect to {endpoint} failed: {source}, is the endpoint listening?")]
    ConnectFailure {
        endpoint: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// The upstream connection failed after connecting (reset, protocol error).
    #[error("upstream {endpoint} failed before responding: {source}")]
    UpstreamReset {
        endpoint: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// The upstream did not answer in time.
    #[error("upstream did not answer within {}ms", after.as_millis())]
    Timeout { after: Duration },
    /// The local rate limit rejected the request.
    #[error("local rate limit exceeded")]
    RateLimited,
    /// Request authentication refused a token.
    #[error("request authentication failed: {0}")]
    Unauthenticated(#[from] crate::authn::Unauthenticated),
    /// An authorization policy denied the request.
    #[error("denied by authorization policy {policy:?}")]
    Denied { policy: String },
    /// Fault injection aborted the request.
    #[error("fault injection abort with status {status}")]
    FaultAbort { status: StatusCode },
    /// The downstream request body failed while being buffered for retries.
    #[error("reading the request body failed: {source}")]
    RequestBody {
        #[source]
        source: BoxError,
    },
    /// Applying the route failed (e.g. a rewrite produced an invalid URI).
    #[error("route action failed: {0}")]
    Route(#[from] RouteError),
}

/// Envoy response flags carried as a response extension, for metrics and access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFlags(pub &'static str);

impl ProxyError {
    /// The status sent downstream.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost | Self::BadPath(_) | Self::RequestBody { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::NoHealthyUpstream { .. } | Self::Overflow(_) | Self::ConnectFailure { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamReset { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Denied { .. } => StatusCode::FORBIDDEN,
            Self::FaultAbort { status } => *status,
            Self::Route(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Envoy response flag for the cause.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::MissingHost | Self::BadPath(_) | Self::RequestBody { .. } => "DPE",
            Self::NoRoute { .. } => "NR",
            Self::NoHealthyUpstream { .. } => "UH",
            Self::Overflow(_) => "UO",
            Self::ConnectFailure { .. } => "UF",
            Self::UpstreamReset { .. } => "UC",
            Self::Timeout { .. } => "UT",
            Self::RateLimited => "RL",
            // Envoy's jwt_authn sets no response flag either (the reason is in the body).
            Self::Unauthenticated(_) => "-",
            Self::Denied { .. } => "RBAC",
            Self::FaultAbort { .. } => "FI",
            Self::Route(_) => "DPE",
        }
    }

    /// Whether the failure happened before any byte reached the upstream, so a retry cannot
    /// duplicate side effects.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::ConnectFailure { .. })
    }

    /// A reason safe to show the client: no endpoint addresses or policy internals, which
    /// stay in the logs.
    pub fn public_reason(&self) -> &'static str {
        match self {
            Self::MissingHost => "missing host header",
            Self::BadPath(_) => "invalid request path",
            Self::RequestBody { .. } => "invalid request body",
            Self::NoRoute { .. } => "no route matched",
            Self::NoHealthyUpstream { .. } => "no healthy upstream",
            Self::Overflow(_) => "upstream overflow: circuit breaker open",
            Self::ConnectFailure { .. } => "upstream connect failure",
            Self::UpstreamReset { .. } => "upstream reset before response",
            Self::Timeout { .. } => "upstream request timeout",
            Self::RateLimited => "local rate limited",
            Self::Unauthenticated(e) => e.reason,
            Self::Denied { .. } => "access denied by authorization policy",
            Self::FaultAbort { .. } => "fault filter abort",
            Self::Route(_) => "route configuration error",
        }
    }

    /// The local reply: status, plain-text public reason and flag, flag extension.
    pub fn into_response(self) -> Response<Body> {
        let challenge = matches!(self, Self::Unauthenticated(_));
        let status = self.status();
        let flag = self.flag();
        let text = format!("{} ({flag})\n", self.public_reason());
        let mut response = Response::new(body::full(text));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if challenge {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response.extensions_mut().insert(ResponseFlags(flag));
        response
    }

    /// The local reply to a gRPC request, as Envoy sends it: HTTP 200, trailers-only, with the
    /// `grpc-status` that gRPC's HTTP mapping gives the status, and the reason as
    /// `grpc-message`.
    pub fn into_grpc_response(self) -> Response<Body> {
        let code = grpc_status(self.status());
        let flag = self.flag();
        let mut response = Response::new(body::empty());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(code));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(self.public_reason()),
        );
        response.extensions_mut().insert(ResponseFlags(flag));
        response
    }
}

/// gRPC's HTTP-to-gRPC status mapping (grpc/doc/http-grpc-status-mapping.md).
fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_local_replies_table() {
        let cases = [
            (
                ProxyError::NoRoute {
                    host: "h".into(),
                    path: "/".into(),
                },
                "12",
                "NR",
            ),
            (ProxyError::Denied { policy: "p".into() }, "7", "RBAC"),
            (
                ProxyError::Timeout {
                    after: Duration::from_secs(1),
                },
                "14",
                "UT",
            ),
            (ProxyError::RateLimited, "14", "RL"),
            (ProxyError::MissingHost, "13", "DPE"),
        ];
        for (err, code, flag) in cases {
            let r = err.into_grpc_response();
            assert_eq!(
                r.status(),
                StatusCode::OK,
                "trailers-only replies are HTTP 200"
            );
            let h = |n: &str| {
                r.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            assert_eq!(h("grpc-status"), code, "{flag}");
            assert_eq!(h("content-type"), "application/grpc");
            assert!(!h("grpc-message").is_empty());
            assert_eq!(
                r.extensions().get::<ResponseFlags>(),
                Some(&ResponseFlags(flag))
            );
        }
    }

    #[test]
    fn status_and_flag_table() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let io = || -> BoxError { Box::new(std::io::Error::other("x")) };
        let cases = [
            (ProxyError::MissingHost, 400, "DPE"),
            (ProxyError::RequestBody { source: io() }, 400, "DPE"),
            (
                ProxyError::NoRoute {
                    host: "h".into(),
                    path: "/".into(),
                },
                404,
                "NR",
            ),
            (
                ProxyError::NoHealthyUpstream {
                    destination: "d".into(),
                    subset: None,
                },
                503,
                "UH",
            ),
            (
                ProxyError::Overflow(CircuitError::Connections { limit: 1 }),
                503,
                "UO",
            ),
            (
                ProxyError::ConnectFailure {
                    endpoint: addr,
                    source: io(),
                },
                503,
                "UF",
            ),
            (
                ProxyError::UpstreamReset {
                    endpoint: addr,
                    source: io(),
                },
                502,
                "UC",
            ),
            (
                ProxyError::Timeout {
                    after: Duration::from_secs(1),
                },
                504,
                "UT",
            ),
            (ProxyError::RateLimited, 429, "RL"),
            (ProxyError::Denied { policy: "p".into() }, 403, "RBAC"),
            (
                ProxyError::FaultAbort {
                    status: StatusCode::IM_A_TEAPOT,
                },
                418,
                "FI",
            ),
        ];
        for (err, status, flag) in cases {
            let text = err.to_string();
            let response = err.into_response();
            assert_eq!(response.status().as_u16(), status, "{text}");
            assert_eq!(
                response.extensions().get::<ResponseFlags>(),
                Some(&ResponseFlags(flag)),
                "{text}"
            );
        }
    }
}
