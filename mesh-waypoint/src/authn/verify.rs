//! Verifying one token against one provider's keys, and what a verified token says.
//!
//! Only asymmetric signatures are accepted (RS*, PS*, ES256, ES384, EdDSA), and only with a key
//! of the matching type (and `alg`, when the key names one): a token cannot choose `none`, an
//! HMAC keyed with a public key, or a key meant for another algorithm. `exp` and `nbf` are
//! checked when present with 60 s of clock skew, as Envoy does; `iss` must be the provider's;
//! `aud` must include one of the provider's audiences when it lists any.

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use jsonwebtoken::{
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet},
    Algorithm, DecodingKey, Validation,
};
use mesh_core::authz::RequestAuth;
use serde_json::{Map, Value};

/// Clock skew allowed on `exp` and `nbf`, in seconds (Envoy's default).
const LEEWAY_SECS: u64 = 60;
/// Longest token looked at; anything longer is refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Nesting of claims flattened for `request.auth.claims[a][b]...`.
const MAX_CLAIM_DEPTH: usize = 4;
/// Claims always read as space-separated lists (OAuth scopes).
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// Why a token was refused (the public reason of the 401).
pub type Refusal = &'static str;

/// The `iss` of a token, read without verifying anything (to pick the provider).
pub fn peek_issuer(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(named) = &jwk.common.key_algorithm {
        if format!("{named:?}") != format!("{alg:?}") {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

/// Verifies `token` for `issuer` with `keys`; the claims when it holds.
pub fn verify(
    token: &str,
    issuer: &str,
    audiences: &[String],
    keys: &JwkSet,
) -> Result<Map<String, Value>, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("jwt is too large");
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| "jwt is malformed")?;
    let alg = header.alg;
    let candidates = keys.keys.iter().filter(|jwk| {
        header
            .kid
            .as_ref()
            .is_none_or(|kid| jwk.common.key_id.as_ref() == Some(kid))
            && key_fits(jwk, alg)
    });
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    // `exp` is optional, as in Envoy; `iss` is not, nor `aud` where audiences are required
    // (the library would otherwise accept a token that simply leaves them out).
    validation.required_spec_claims = HashSet::from(["iss".to_owned()]);
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    if audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(audiences);
        validation.required_spec_claims.insert("aud".to_owned());
    }
    let mut refusal = "no key verifies the jwt";
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(error) => match error.kind() {
                ErrorKind::ExpiredSignature => return Err("jwt is expired"),
                ErrorKind::ImmatureSignature => return Err("jwt is not yet valid"),
                ErrorKind::InvalidIssuer => return Err("jwt issuer is not configured"),
                ErrorKind::InvalidAudience => return Err("audiences in jwt are not allowed"),
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                    return Err("audiences in jwt are not allowed")
                }
                ErrorKind::MissingRequiredClaim(_) => return Err("jwt lacks a required claim"),
                ErrorKind::InvalidSignature => refusal = "jwt verification fails",
                _ => {}
            },
        }
    }
    Err(refusal)
}

/// What a verified token tells policy: `<iss>/<sub>`, audiences, presenter, claims.
pub fn request_auth(claims: &Map<String, Value>, space_delimited: &[String]) -> RequestAuth {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let principal = format!(
        "{}/{}",
        text("iss").unwrap_or_default(),
        text("sub").unwrap_or_default()
    );
    let audiences = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let mut flat = BTreeMap::new();
    for (name, value) in claims {
        let split = SPACE_DELIMITED.contains(&name.as_str()) || space_delimited.contains(name);
        flatten(name.clone(), value, split, 0, &mut flat);
    }
    RequestAuth {
        principal: Some(principal),
        audiences,
        presenter: text("azp"),
        claims: flat,
    }
}

/// A claim's values under `path` (`a][b` for `[a][b]`), recursing into objects.
fn flatten(
    path: String,
    value: &Value,
    split: bool,
    depth: usize,
    out: &mut BTreeMap<String, Vec<String>>,
) {
    let scalar = |value: &Value| match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let values: Vec<String> = match value {
        Value::String(s) if split => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        Value::Object(fields) => {
            if depth < MAX_CLAIM_DEPTH {
                for (name, nested) in fields {
                    flatten(format!("{path}][{name}"), nested, false, depth + 1, out);
                }
            }
            return;
        }
        other => scalar(other).into_iter().collect(),
    };
    out.insert(path, values);
}

/// The claim `name` as a header value (strings, numbers, booleans; others are not copied).
pub fn claim_header_value(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
