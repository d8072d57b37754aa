//! Header hygiene at the proxy: hop-by-hop headers (RFC 9110 section 7.6.1), upgrades, the
//! request authority, and `x-forwarded-for`.

use std::net::SocketAddr;

use http::{
    header::{CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE},
    HeaderMap, HeaderName, HeaderValue, Request, Version,
};

/// `keep-alive` and `proxy-connection` have no constant in `http`.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether an HTTP/1.1 request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including those named by `Connection`. `te: trailers` is kept
/// (gRPC needs it); an upgrade keeps `Upgrade` and `Connection: upgrade` so it can be relayed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(keep_upgrade && *n == UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TRANSFER_ENCODING, TRAILER] {
        headers.remove(name);
    }
    let te_trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(TE);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(CONNECTION);
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// The request's authority: `:authority` (HTTP/2, absolute-form) or `Host`.
pub fn authority<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

/// Copies an HTTP/2 `:authority` into `Host` when absent. The upstream pool is keyed by
/// endpoint, so the upstream `:authority` is the endpoint address; `Host` keeps the
/// service name for the backend.
pub fn ensure_host(parts: &mut http::request::Parts) {
    if parts.headers.contains_key(HOST) {
        return;
    }
    let value = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(value) = value {
        parts.headers.insert(HOST, value);
    }
}

/// `x-forwarded-proto`: the scheme the client used to reach the edge.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Sets `x-forwarded-proto` to `scheme` (`http` or `https`), replacing what the client sent.
pub fn set_forwarded_proto(headers: &mut HeaderMap, scheme: &'static str) {
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
}

/// Appends the downstream peer to `x-forwarded-for`, as Envoy does at the edge of the mesh.
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut n: Vec<_> = h
            .iter()
            .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
            .collect();
        n.sort();
        n
    }

    type Case = (
        &'static [(&'static str, &'static str)],
        bool,
        &'static [&'static str],
    );

    #[test]
    fn hop_by_hop_table() {
        let cases: [Case; 4] = [
            (
                &[
                    ("connection", "keep-alive, x-secret"),
                    ("keep-alive", "5"),
                    ("x-secret", "1"),
                    ("x-app", "a"),
                ],
                false,
                &["x-app=a"],
            ),
            (
                &[
                    ("te", "trailers, deflate"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
                &["te=trailers"],
            ),
            (
                &[
                    ("te", "gzip"),
                    ("upgrade", "h2c"),
                    ("proxy-connection", "x"),
                ],
                false,
                &[],
            ),
            (
                &[
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-key", "k"),
                ],
                true,
                &[
                    "connection=upgrade",
                    "sec-websocket-key=k",
                    "upgrade=websocket",
                ],
            ),
        ];
        for (input, keep, want) in cases {
            let mut h = headers(input);
            strip_hop_by_hop(&mut h, keep);
            assert_eq!(
                names(&h),
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{input:?}"
            );
        }
    }

    #[test]
    fn upgrade_detection() {
        let req = |conn: &str, version| {
            Request::builder()
                .version(version)
                .header(CONNECTION, conn)
                .header(UPGRADE, "websocket")
                .body(())
                .expect("request")
        };
        assert!(is_upgrade(&req("keep-alive, Upgrade", Version::HTTP_11)));
        assert!(!is_upgrade(&req("keep-alive", Version::HTTP_11)));
        assert!(!is_upgrade(&req("upgrade", Version::HTTP_2)));
    }

    #[test]
    fn forwarded_for_appends() {
        let peer: SocketAddr = ([10, 1, 2, 3], 5000).into();
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, peer);
        append_forwarded_for(&mut h, peer);
        assert_eq!(
            h.get(X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"10.1.2.3, 10.1.2.3"[..])
        );
    }

    #[test]
    fn authority_prefers_uri() {
        let r = Request::builder()
            .uri("http://a.b:80/x")
            .header(HOST, "c")
            .body(())
            .expect("request");
        assert_eq!(authority(&r).as_deref(), Some("a.b:80"));
        let r = Request::builder()
            .uri("/x")
            .header(HOST, "c")
            .body(())
            .expect("request");
        assert_eq!(authority(&r).as_deref(), Some("c"));
    }
}
