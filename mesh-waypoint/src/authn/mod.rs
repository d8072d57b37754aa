//! Request authentication (Istio `RequestAuthentication`): JWT validation before authorization.
//!
//! For the requests a `RequestAuthentication` targets, every token found in a configured place
//! (by default `Authorization: Bearer <token>` and the `access_token` query parameter) must be
//! verified by the rule for its issuer, or the request is refused (401). A request without a
//! token passes with no request principal; AuthorizationPolicy decides what it may do
//! (`requestPrincipals: ["*"]` to require one). A verified token gives the principal
//! `<iss>/<sub>` and the claims that `request.auth.*` conditions read.
//!
//! After verification, as Envoy does: the token header is removed unless
//! `forwardOriginalToken`, and `outputClaimToHeaders` / `outputPayloadToHeader` are set. Unlike
//! Envoy, those output headers are first removed from every request in scope, so a client
//! without a token cannot supply them itself.

pub mod jwks;
pub mod verify;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use http::{header::HeaderName, request::Parts, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use mesh_core::authz::RequestAuth;

pub use self::jwks::{JwksCache, KeySource};

/// How long fetching a `jwksUri` may take unless the rule says (Istio's default).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a token is carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header, after an optional prefix (`Bearer `, matched ignoring ASCII case).
    Header {
        /// Header name.
        name: HeaderName,
        /// Prefix before the token.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl Location {
    /// Istio's defaults when a rule names no location.
    pub fn defaults() -> Vec<Location> {
        vec![
            Location::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".to_owned(),
            },
            Location::Param("access_token".to_owned()),
        ]
    }
}

/// Where a provider's verification keys come from.
#[derive(Debug, Clone)]
pub enum Keys {
    /// `jwks`, inline.
    Inline(Arc<JwkSet>),
    /// `jwksUri` or OpenID discovery, fetched by the waypoint.
    Remote {
        /// What to fetch.
        source: KeySource,
        /// Bound on the fetch.
        timeout: Duration,
    },
    /// The rule did not convert (the reason was reported): its issuer's tokens are refused.
    Unusable,
}

/// One accepted issuer (a compiled Istio `JWTRule`).
#[derive(Debug, Clone)]
pub struct JwtProvider {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values; empty: not checked.
    pub audiences: Vec<String>,
    /// Verification keys.
    pub keys: Keys,
    /// Where its tokens are carried.
    pub locations: Vec<Location>,
    /// Keep the token header upstream.
    pub forward_original_token: bool,
    /// `(header, claim)` pairs set after verification.
    pub claim_headers: Vec<(HeaderName, String)>,
    /// Header for the verified payload.
    pub payload_header: Option<HeaderName>,
    /// Claims read as space-separated lists.
    pub space_delimited: Vec<String>,
}

/// One `RequestAuthentication` with the route keys (`vip:port`) it applies to.
#[derive(Debug, Clone)]
pub struct ScopedAuthn {
    /// `<namespace>/<name>`, for logs.
    pub key: String,
    /// Route keys of the targeted services; `None`: every request (the waypoint itself is
    /// targeted). Requests without a route key (ingress) are in every scope: more checks, never
    /// fewer.
    pub scope: Option<BTreeSet<String>>,
    /// Its rules.
    pub providers: Vec<JwtProvider>,
    /// The resource did not validate at mesh-control: every request in scope is refused, since
    /// what it was meant to require is unknown.
    pub refuse_all: bool,
}

impl ScopedAuthn {
    fn applies(&self, route_key: Option<&str>) -> bool {
        match (&self.scope, route_key) {
            (Some(keys), Some(key)) => keys.contains(key),
            _ => true,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unauthenticated {
    /// Public reason.
    pub reason: verify::Refusal,
}

/// The request authentication of one configuration version.
#[derive(Debug, Default)]
pub struct Authenticator {
    scoped: Vec<ScopedAuthn>,
    jwks: Arc<JwksCache>,
}

struct Found {
    location: Location,
    token: String,
}

impl Authenticator {
    /// `scoped` rules, fetching remote keys through `jwks` (shared across versions).
    pub fn new(scoped: Vec<ScopedAuthn>, jwks: Arc<JwksCache>) -> Self {
        Self { scoped, jwks }
    }

    /// The key cache, to hand to the next configuration version.
    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    /// Authenticates the request for `route_key`: `Ok` with what the tokens established (empty
    /// without a token), or the reason for a 401. Edits `parts` headers as configured.
    pub async fn authenticate(
        &self,
        parts: &mut Parts,
        route_key: Option<&str>,
    ) -> Result<RequestAuth, Unauthenticated> {
        let scoped: Vec<&ScopedAuthn> = self
            .scoped
            .iter()
            .filter(|s| s.applies(route_key))
            .collect();
        if scoped.iter().any(|s| s.refuse_all) {
            return Err(Unauthenticated {
                reason: "request authentication is misconfigured",
            });
        }
        let providers: Vec<&JwtProvider> = scoped.iter().flat_map(|s| &s.providers).collect();
        if providers.is_empty() {
            return Ok(RequestAuth::default());
        }
        for provider in &providers {
            let outputs = provider.claim_headers.iter().map(|(h, _)| h);
            for header in outputs.chain(&provider.payload_header) {
                parts.headers.remove(header);
            }
        }
        let found = find_tokens(parts, &providers);
        let mut auth = RequestAuth::default();
        for Found { location, token } in &found {
            let refuse = |reason| Unauthenticated { reason };
            let issuer = verify::peek_issuer(token).ok_or(refuse("jwt is malformed"))?;
            let provider = providers
                .iter()
                .find(|p| p.issuer == issuer && p.locations.contains(location))
                .ok_or(refuse("jwt issuer is not configured"))?;
            let keys = match &provider.keys {
                Keys::Inline(keys) => Some(keys.clone()),
                Keys::Remote { source, timeout } => self.jwks.keys(source, *timeout).await,
                Keys::Unusable => None,
            }
            .ok_or(refuse("jwks is unavailable"))?;
            let claims = verify::verify(token, &provider.issuer, &provider.audiences, &keys)
                .map_err(refuse)?;
            apply_outputs(parts, provider, location, token, &claims);
            if auth.principal.is_none() {
                auth = verify::request_auth(&claims, &provider.space_delimited);
            }
        }
        Ok(auth)
    }
}

/// Every distinct token in a place some provider reads.
fn find_tokens(parts: &Parts, providers: &[&JwtProvider]) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for location in providers.iter().flat_map(|p| &p.locations) {
        for token in extract(parts, location) {
            let seen = found
                .iter()
                .any(|f| &f.location == location && f.token == token);
            if !seen {
                found.push(Found {
                    location: location.clone(),
                    token,
                });
            }
        }
    }
    found
}

fn extract(parts: &Parts, location: &Location) -> Vec<String> {
    match location {
        Location::Header { name, prefix } => parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(|value| {
                let head = value.get(..prefix.len())?;
                head.eq_ignore_ascii_case(prefix)
                    .then(|| value[prefix.len()..].trim().to_owned())
            })
            .filter(|token| !token.is_empty())
            .collect(),
        Location::Param(name) => parts
            .uri
            .query()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, _)| key == name)
            .filter_map(|(_, value)| percent_decode(value))
            .filter(|token| !token.is_empty())
            .collect(),
        Location::Cookie(name) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.trim().to_owned())
            .filter(|token| !token.is_empty())
            .collect(),
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Removes the token header unless forwarded; sets the claim and payload headers.
fn apply_outputs(
    parts: &mut Parts,
    provider: &JwtProvider,
    location: &Location,
    token: &str,
    claims: &serde_json::Map<String, serde_json::Value>,
) {
    if let (Location::Header { name, .. }, false) = (location, provider.forward_original_token) {
        parts.headers.remove(name);
    }
    for (header, claim) in &provider.claim_headers {
        let value =
            verify::claim_header_value(claims, claim).and_then(|v| HeaderValue::from_str(&v).ok());
        if let Some(value) = value {
            parts.headers.insert(header.clone(), value);
        }
    }
    if let Some(header) = &provider.payload_header {
        // The payload segment of a verified token is already unpadded base64url.
        let payload = token.split('.').nth(1).unwrap_or_default();
        if let Ok(value) = HeaderValue::from_str(payload) {
            parts.headers.insert(header.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests;
