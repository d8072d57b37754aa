//! RequestAuthentication into [`RequestAuthn`] for the waypoints it targets.
//!
//! Waypoints enforce request authentication, so as in Istio's ambient mode only resources with
//! `targetRef(s)` take effect; one without is reported, not silently dropped. A resource that
//! does not validate (a field Istio does not define, an empty issuer, a JWKS that is not JSON,
//! a `jwksUri` that is not an http(s) URL, a bad header name or timeout) is kept with
//! `refuse_all`: every request in its scope is refused until it is fixed, since what it was
//! meant to require is unknown.

use std::collections::BTreeMap;

use super::{
    duration::parse_duration,
    policy::{report_unknown_fields, targets_of},
    resource::ObjectKey,
    Ctx, Diagnostics, Kind, Resource,
};
use crate::crd::security::{JwtRule, RequestAuthentication};
use crate::model::{JwtProvider, PolicyScope, RequestAuthn};

/// Translates every RequestAuthentication.
pub fn translate(ctx: &Ctx<'_>, diags: &mut Diagnostics<'_>) -> BTreeMap<String, RequestAuthn> {
    let mut out = BTreeMap::new();
    for (key, stored) in ctx.of_kind(Kind::RequestAuthentication) {
        let Resource::RequestAuthentication(resource) = &stored.resource else {
            continue;
        };
        diags.set_origin(&stored.origin);
        if let Some(translated) = translate_one(key, resource, diags) {
            out.insert(translated.key.clone(), translated);
        }
    }
    out
}

fn translate_one(
    key: &ObjectKey,
    resource: &RequestAuthentication,
    diags: &mut Diagnostics<'_>,
) -> Option<RequestAuthn> {
    let spec = &resource.spec;
    let targets = targets_of(key, spec.target_ref.as_ref(), &spec.target_refs);
    if targets.is_empty() {
        diags.push(
            key,
            "spec.targetRefs",
            "without targetRef(s) a RequestAuthentication is not enforced in ambient mode \
             (waypoints enforce the ones attached to a Service or Gateway); not applied",
        );
        return None;
    }
    let mut translated = RequestAuthn {
        key: format!("{}/{}", key.namespace, key.name),
        scope: PolicyScope::Targeted(targets),
        rules: Vec::new(),
        refuse_all: false,
    };
    if spec.selector.is_some() {
        diags.push(
            key,
            "spec.selector",
            "selector and targetRef(s) together are invalid; refusing every request in scope",
        );
        translated.refuse_all = true;
        return Some(translated);
    }
    let consequence = "refusing every request in scope";
    if report_unknown_fields(diags, key, &spec.unknown_fields, consequence) {
        translated.refuse_all = true;
        return Some(translated);
    }
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        match provider(rule) {
            Ok(provider) => translated.rules.push(provider),
            Err((field, message)) => {
                diags.push(
                    key,
                    &format!("spec.jwtRules[{i}].{field}"),
                    &format!("{message}; refusing every request in scope"),
                );
                translated.refuse_all = true;
                translated.rules.clear();
                return Some(translated);
            }
        }
    }
    Some(translated)
}

fn header_name(text: &str) -> bool {
    http::header::HeaderName::from_bytes(text.as_bytes()).is_ok()
}

fn provider(rule: &JwtRule) -> Result<JwtProvider, (String, String)> {
    let bad = |field: &str, message: String| Err((field.to_owned(), message));
    if rule.issuer.trim().is_empty() {
        return bad("issuer", "an issuer is required".into());
    }
    if let Some(jwks) = &rule.jwks {
        let keys = serde_json::from_str::<serde_json::Value>(jwks)
            .ok()
            .and_then(|v| v.get("keys").map(serde_json::Value::is_array));
        if keys != Some(true) {
            return bad(
                "jwks",
                "not a JSON Web Key Set (an object with a keys array)".into(),
            );
        }
    }
    if let Some(uri) = &rule.jwks_uri {
        let scheme_ok = uri.starts_with("https://") || uri.starts_with("http://");
        if !scheme_ok || uri.parse::<http::Uri>().is_err() {
            return bad("jwksUri", format!("{uri:?} is not an http(s) URL"));
        }
    }
    let issuer_is_url = ["https://", "http://"]
        .iter()
        .any(|scheme| rule.issuer.starts_with(scheme));
    if rule.jwks.is_none() && rule.jwks_uri.is_none() && !issuer_is_url {
        return bad(
            "issuer",
            format!(
                "without jwks or jwksUri the keys are found by OpenID discovery, which needs an \
                 http(s) issuer URL, not {:?}",
                rule.issuer
            ),
        );
    }
    let fetch_timeout = match &rule.timeout {
        Some(text) => Some(parse_duration(text).map_err(|e| ("timeout".to_owned(), e))?),
        None => None,
    };
    for (i, header) in rule.from_headers.iter().enumerate() {
        if !header_name(&header.name) {
            return bad(
                &format!("fromHeaders[{i}].name"),
                format!("{:?} is not a header name", header.name),
            );
        }
    }
    for (i, output) in rule.output_claim_to_headers.iter().enumerate() {
        if !header_name(&output.header) || output.claim.is_empty() {
            return bad(
                &format!("outputClaimToHeaders[{i}]"),
                "needs a valid header name and a claim".into(),
            );
        }
    }
    if let Some(header) = &rule.output_payload_to_header {
        if !header_name(header) {
            return bad(
                "outputPayloadToHeader",
                format!("{header:?} is not a header name"),
            );
        }
    }
    Ok(JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        jwks: rule.jwks.clone(),
        jwks_uri: rule.jwks_uri.clone(),
        fetch_timeout,
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| (h.name.clone(), h.prefix.clone().unwrap_or_default()))
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_original_token: rule.forward_original_token,
        output_claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|o| (o.header.clone(), o.claim.clone()))
            .collect(),
        output_payload_to_header: rule.output_payload_to_header.clone(),
        space_delimited_claims: rule.space_delimited_claims.clone(),
    })
}
