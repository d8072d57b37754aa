//! Request authentication against tokens minted here, including the ones an attacker would try.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const ISSUER: &str = "https://issuer.test";

struct Signer {
    key: EncodingKey,
    jwks: String,
}

impl Signer {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem");
        let point = pair.public_key_raw();
        let (x, y) = point[1..].split_at(32);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": B64.encode(x), "y": B64.encode(y),
        }]})
        .to_string();
        Self { key, jwks }
    }

    fn mint(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut base = json!({"iss": ISSUER, "sub": "alice", "exp": now() + 600});
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

fn provider(keys: Keys) -> JwtProvider {
    JwtProvider {
        issuer: ISSUER.to_owned(),
        audiences: Vec::new(),
        keys,
        locations: Location::defaults(),
        forward_original_token: false,
        claim_headers: Vec::new(),
        payload_header: None,
        space_delimited: Vec::new(),
    }
}

fn inline(signer: &Signer) -> Keys {
    Keys::Inline(Arc::new(
        jwks::parse_key_set(signer.jwks.as_bytes()).expect("jwks"),
    ))
}

fn authenticator(providers: Vec<JwtProvider>) -> Authenticator {
    Authenticator::new(
        vec![ScopedAuthn {
            key: "demo/jwt".into(),
            scope: None,
            providers,
            refuse_all: false,
        }],
        Arc::default(),
    )
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request").into_parts().0
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn run(a: &Authenticator, parts: &mut Parts) -> Result<RequestAuth, &'static str> {
    a.authenticate(parts, Some("10.0.0.1:80"))
        .await
        .map_err(|e| e.reason)
}

#[tokio::test]
async fn a_valid_token_names_the_principal_and_leaves_no_token_upstream() {
    let signer = Signer::new("k1");
    let a = authenticator(vec![provider(inline(&signer))]);
    let token = signer.mint(
        "k1",
        &claims(json!({"groups": ["dev", "ops"], "scope": "read write"})),
    );
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    let auth = run(&a, &mut parts).await.expect("valid");
    assert_eq!(auth.principal.as_deref(), Some("https://issuer.test/alice"));
    assert_eq!(auth.claims["groups"], ["dev", "ops"]);
    assert_eq!(
        auth.claims["scope"],
        ["read", "write"],
        "scope is space-delimited"
    );
    assert!(
        parts.headers.get("authorization").is_none(),
        "token not forwarded"
    );
    // forwardOriginalToken keeps it.
    let mut keep = provider(inline(&signer));
    keep.forward_original_token = true;
    let a = authenticator(vec![keep]);
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    run(&a, &mut parts).await.expect("valid");
    assert!(parts.headers.get("authorization").is_some());
}

#[tokio::test]
async fn no_token_passes_without_a_principal() {
    let signer = Signer::new("k1");
    let a = authenticator(vec![provider(inline(&signer))]);
    for headers in [&[][..], &[("authorization", "Basic dXNlcjpwYXNz")][..]] {
        let auth = run(&a, &mut request("/", headers))
            .await
            .expect("anonymous");
        assert_eq!(auth, RequestAuth::default());
    }
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let signer = Signer::new("k1");
    let stranger = Signer::new("k1");
    let mut audience = provider(inline(&signer));
    audience.audiences = vec!["shop".into()];
    let a = authenticator(vec![audience]);
    let good = json!({"aud": ["other", "shop"]});
    assert!(run(
        &a,
        &mut request(
            "/",
            &[("authorization", &bearer(&signer.mint("k1", &claims(good))))]
        )
    )
    .await
    .is_ok());
    let payload = |token: &str| token.split('.').nth(1).unwrap_or_default().to_owned();
    let valid = signer.mint("k1", &claims(json!({"aud": "shop"})));
    let forged_payload = B64.encode(claims(json!({"aud": "shop", "sub": "root"})).to_string());
    let tampered = valid.replace(&payload(&valid), &forged_payload);
    let none_alg = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims(json!({"aud": "shop"})).to_string())
    );
    // An HMAC "signed" with the public key material: the classic algorithm confusion.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims(json!({"aud": "shop"})),
        &EncodingKey::from_secret(signer.jwks.as_bytes()),
    )
    .expect("sign");
    let cases = [
        (
            signer.mint("k1", &claims(json!({"aud": "shop", "exp": now() - 3600}))),
            "jwt is expired",
        ),
        (
            signer.mint("k1", &claims(json!({"aud": "shop", "nbf": now() + 3600}))),
            "jwt is not yet valid",
        ),
        (
            signer.mint(
                "k1",
                &claims(json!({"aud": "shop", "iss": "https://evil.test"})),
            ),
            "jwt issuer is not configured",
        ),
        (
            signer.mint("k1", &claims(json!({"aud": "elsewhere"}))),
            "audiences in jwt are not allowed",
        ),
        (
            signer.mint("k1", &claims(json!({}))),
            "audiences in jwt are not allowed",
        ),
        (
            stranger.mint("k1", &claims(json!({"aud": "shop"}))),
            "jwt verification fails",
        ),
        (
            signer.mint("k2", &claims(json!({"aud": "shop"}))),
            "no key verifies the jwt",
        ),
        (tampered, "jwt verification fails"),
        (none_alg, "jwt is malformed"),
        (confused, "no key verifies the jwt"),
        ("not.a.jwt".to_owned(), "jwt is malformed"),
        ("x".repeat(20_000), "jwt is malformed"),
    ];
    for (token, reason) in cases {
        let got = run(&a, &mut request("/", &[("authorization", &bearer(&token))])).await;
        assert_eq!(got, Err(reason), "{}", &token[..token.len().min(60)]);
    }
    // Still within the 60 s clock skew.
    let late = signer.mint("k1", &claims(json!({"aud": "shop", "exp": now() - 30})));
    assert!(
        run(&a, &mut request("/", &[("authorization", &bearer(&late))]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn tokens_are_read_from_the_configured_places_only() {
    let signer = Signer::new("k1");
    let token = signer.mint("k1", &claims(json!({})));
    let a = authenticator(vec![provider(inline(&signer))]);
    let auth = run(
        &a,
        &mut request(&format!("/?x=1&access_token={token}"), &[]),
    )
    .await
    .expect("default parameter");
    assert!(auth.principal.is_some());
    let mut custom = provider(inline(&signer));
    custom.locations = vec![
        Location::Header {
            name: HeaderName::from_static("x-jwt"),
            prefix: String::new(),
        },
        Location::Param("jwt".into()),
        Location::Cookie("session".into()),
    ];
    let a = authenticator(vec![custom]);
    for parts in [
        request("/", &[("x-jwt", &token)]),
        request(&format!("/?jwt={token}"), &[]),
        request("/", &[("cookie", &format!("a=b; session={token}"))]),
    ] {
        let mut parts = parts;
        let auth = run(&a, &mut parts).await.expect("found");
        assert!(auth.principal.is_some(), "{:?}", parts.uri);
    }
    // The default places are not read when others are configured.
    let auth = run(&a, &mut request("/", &[("authorization", &bearer(&token))]))
        .await
        .expect("not looked at");
    assert_eq!(auth.principal, None);
    // A bad token in any configured place refuses the request, even beside a good one.
    let bad = Signer::new("k1").mint("k1", &claims(json!({})));
    let mut parts = request(&format!("/?jwt={bad}"), &[("x-jwt", &token)]);
    assert_eq!(run(&a, &mut parts).await, Err("jwt verification fails"));
}

#[tokio::test]
async fn output_headers_come_only_from_a_verified_token() {
    let signer = Signer::new("k1");
    let mut p = provider(inline(&signer));
    p.claim_headers = vec![(HeaderName::from_static("x-jwt-group"), "group".into())];
    p.payload_header = Some(HeaderName::from_static("x-jwt-payload"));
    let a = authenticator(vec![p]);
    // A client without a token cannot supply them.
    let spoofed = [("x-jwt-group", "admins"), ("x-jwt-payload", "e30")];
    let mut parts = request("/", &spoofed);
    run(&a, &mut parts).await.expect("anonymous");
    assert!(parts.headers.get("x-jwt-group").is_none());
    assert!(parts.headers.get("x-jwt-payload").is_none());
    let token = signer.mint("k1", &claims(json!({"group": "dev"})));
    let mut parts = request("/", &[("authorization", &bearer(&token)), spoofed[0]]);
    run(&a, &mut parts).await.expect("valid");
    assert_eq!(parts.headers["x-jwt-group"], "dev");
    let payload = parts.headers["x-jwt-payload"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let decoded: Value = serde_json::from_slice(&B64.decode(payload).expect("b64")).expect("json");
    assert_eq!(decoded["sub"], "alice");
}

#[tokio::test]
async fn scope_and_misconfiguration() {
    let signer = Signer::new("k1");
    let token = signer.mint("k1", &claims(json!({"iss": "https://someone-else.test"})));
    let scoped = |scope: Option<BTreeSet<String>>, refuse_all| ScopedAuthn {
        key: "demo/jwt".into(),
        scope,
        providers: vec![provider(inline(&signer))],
        refuse_all,
    };
    let elsewhere = Some(BTreeSet::from(["10.9.9.9:80".to_owned()]));
    let a = Authenticator::new(vec![scoped(elsewhere.clone(), false)], Arc::default());
    // Not in scope: the token is not looked at.
    let auth = run(&a, &mut request("/", &[("authorization", &bearer(&token))])).await;
    assert_eq!(auth, Ok(RequestAuth::default()));
    // Without a route key (ingress), every scope applies.
    let got = a
        .authenticate(
            &mut request("/", &[("authorization", &bearer(&token))]),
            None,
        )
        .await;
    assert!(got.is_err());
    let a = Authenticator::new(vec![scoped(None, true)], Arc::default());
    assert_eq!(
        run(&a, &mut request("/", &[])).await,
        Err("request authentication is misconfigured")
    );
    let a = authenticator(vec![provider(Keys::Unusable)]);
    let token = signer.mint("k1", &claims(json!({})));
    let got = run(&a, &mut request("/", &[("authorization", &bearer(&token))])).await;
    assert_eq!(got, Err("jwks is unavailable"));
}

/// A key server on loopback: serves `body` at every path (and a discovery document pointing
/// at itself), counting requests; `hang` makes it never answer.
async fn key_server(body: String, hang: bool) -> (String, Arc<AtomicUsize>) {
    use hyper::{server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let (count, me) = (hits.clone(), base.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, body, me) = (count.clone(), body.clone(), me.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let (body, me) = (body.clone(), me.clone());
                    async move {
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        let text = if req.uri().path().ends_with("openid-configuration") {
                            json!({"issuer": me, "jwks_uri": format!("{me}/keys")}).to_string()
                        } else {
                            body
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(text)),
                        ))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (base, hits)
}

#[tokio::test]
async fn remote_keys_are_fetched_once_and_cached() {
    let signer = Signer::new("k1");
    let (base, hits) = key_server(signer.jwks.clone(), false).await;
    let remote = Keys::Remote {
        source: KeySource::Uri(format!("{base}/keys")),
        timeout: Duration::from_secs(5),
    };
    let a = authenticator(vec![provider(remote)]);
    let token = signer.mint("k1", &claims(json!({})));
    for _ in 0..5 {
        let mut parts = request("/", &[("authorization", &bearer(&token))]);
        assert!(run(&a, &mut parts)
            .await
            .expect("valid")
            .principal
            .is_some());
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one fetch for five requests"
    );
    // OpenID discovery from the issuer when neither jwks nor jwksUri is set.
    let mut discovered = provider(Keys::Remote {
        source: KeySource::Discovery {
            issuer: base.clone(),
        },
        timeout: Duration::from_secs(5),
    });
    discovered.issuer = base.clone();
    let a = authenticator(vec![discovered]);
    let token = signer.mint("k1", &claims(json!({"iss": base})));
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert!(run(&a, &mut parts).await.is_ok());
}

#[tokio::test]
async fn an_unreachable_or_hanging_key_server_fails_closed_within_the_timeout() {
    let signer = Signer::new("k1");
    let token = signer.mint("k1", &claims(json!({})));
    let (hanging, _) = key_server(signer.jwks.clone(), true).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let (garbage, _) = key_server("<html>not keys</html>".into(), false).await;
    for base in [hanging, closed, garbage] {
        let a = authenticator(vec![provider(Keys::Remote {
            source: KeySource::Uri(format!("{base}/keys")),
            timeout: Duration::from_millis(300),
        })]);
        let started = std::time::Instant::now();
        let mut parts = request("/", &[("authorization", &bearer(&token))]);
        assert_eq!(
            run(&a, &mut parts).await,
            Err("jwks is unavailable"),
            "{base}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{base}: bounded wait"
        );
    }
}
