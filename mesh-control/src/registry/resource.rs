//! Parsing Kubernetes-shaped objects (YAML documents or watcher items) into [`Resource`]s.
//!
//! Each document is parsed on its own, so one bad document never hides the others. A document
//! whose kind is not one the mesh reads is skipped; one that fails to parse is reported with
//! its origin and the path of the offending field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use serde::de::DeserializeOwned;

use super::secret::{TlsSecret, TLS_SECRET_TYPE};
use crate::crd::gateway::{HttpRoute, K8sGateway};
use crate::crd::networking::{DestinationRule, Gateway, ServiceEntry, VirtualService};
use crate::crd::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::model::Diagnostic;

/// Kinds the mesh reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 ServiceAccount.
    ServiceAccount,
    /// security.istio.io AuthorizationPolicy.
    AuthorizationPolicy,
    /// security.istio.io PeerAuthentication.
    PeerAuthentication,
    /// security.istio.io RequestAuthentication.
    RequestAuthentication,
    /// networking.istio.io VirtualService.
    VirtualService,
    /// networking.istio.io DestinationRule.
    DestinationRule,
    /// networking.istio.io ServiceEntry.
    ServiceEntry,
    /// networking.istio.io Gateway.
    Gateway,
    /// gateway.networking.k8s.io HTTPRoute.
    HttpRoute,
    /// gateway.networking.k8s.io Gateway.
    K8sGateway,
    /// core/v1 Secret of type `kubernetes.io/tls` (other types are skipped).
    Secret,
}

impl Kind {
    /// The Kubernetes `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::K8sGateway => "Gateway.gateway.networking.k8s.io",
            Kind::Secret => "Secret",
        }
    }

    /// The kind for an `apiVersion` group and `kind`, if the mesh reads it.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let found = match (group, kind) {
            ("", "Namespace") => Kind::Namespace,
            ("", "Pod") => Kind::Pod,
            ("", "Service") => Kind::Service,
            ("", "ServiceAccount") => Kind::ServiceAccount,
            ("", "Secret") => Kind::Secret,
            ("discovery.k8s.io", "EndpointSlice") => Kind::EndpointSlice,
            ("security.istio.io", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            ("security.istio.io", "PeerAuthentication") => Kind::PeerAuthentication,
            ("security.istio.io", "RequestAuthentication") => Kind::RequestAuthentication,
            ("networking.istio.io", "VirtualService") => Kind::VirtualService,
            ("networking.istio.io", "DestinationRule") => Kind::DestinationRule,
            ("networking.istio.io", "ServiceEntry") => Kind::ServiceEntry,
            ("networking.istio.io", "Gateway") => Kind::Gateway,
            ("gateway.networking.k8s.io", "HTTPRoute") => Kind::HttpRoute,
            ("gateway.networking.k8s.io", "Gateway") => Kind::K8sGateway,
            _ => return None,
        };
        Some(found)
    }
}

/// Identifies one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// One parsed object.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // Pods dominate; boxing every variant buys nothing.
pub enum Resource {
    /// A Namespace.
    Namespace(Namespace),
    /// A Pod.
    Pod(Pod),
    /// A Service.
    Service(Service),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A ServiceAccount.
    ServiceAccount(ServiceAccount),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// An AuthorizationPolicy that failed to parse: kept so the registry can fail closed (deny
    /// everything in its namespace) instead of silently dropping a DENY rule.
    BrokenAuthorizationPolicy {
        /// Why it failed.
        error: String,
    },
    /// A PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// A PeerAuthentication that failed to parse: kept so its scope fails closed (STRICT)
    /// instead of falling back to a weaker mode when an edit breaks it.
    BrokenPeerAuthentication {
        /// Why it failed.
        error: String,
        /// `spec.selector.matchLabels` when they could be read (all strings); otherwise the
        /// policy is taken as namespace-wide, the broader scope.
        selector: Option<BTreeMap<String, String>>,
    },
    /// A RequestAuthentication.
    RequestAuthentication(RequestAuthentication),
    /// A VirtualService.
    VirtualService(VirtualService),
    /// A DestinationRule.
    DestinationRule(DestinationRule),
    /// A ServiceEntry.
    ServiceEntry(ServiceEntry),
    /// A Gateway.
    Gateway(Gateway),
    /// An HTTPRoute.
    HttpRoute(HttpRoute),
    /// A Gateway API Gateway.
    K8sGateway(K8sGateway),
    /// A `kubernetes.io/tls` Secret (its certificate and key only).
    TlsSecret(TlsSecret),
}

/// Objects parsed from one source, plus what could not be parsed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Objects with their origin (e.g. `dir/app.yaml#2`).
    pub objects: Vec<(ObjectKey, String, Resource)>,
    /// Rejected documents.
    pub diagnostics: Vec<Diagnostic>,
}

/// The failing field's path and the message.
fn located<E: std::fmt::Display>(err: serde_path_to_error::Error<E>) -> (String, String) {
    let field = err.path().to_string();
    (field, err.into_inner().to_string())
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(located)
}

/// Like [`typed`] for a security resource, which must not drop anything silently: the paths of
/// fields under `spec` the type does not define go to `unknown_fields(&mut resource)` (`status`
/// and the like are not policy).
fn typed_security<T: DeserializeOwned>(
    value: serde_yaml::Value,
    unknown_fields: fn(&mut T) -> &mut Vec<String>,
) -> Result<T, (String, String)> {
    let mut unknown = Vec::new();
    let mut collect = |path: serde_ignored::Path<'_>| {
        let path = field_path(&path);
        if path == "spec" || path.starts_with("spec.") {
            unknown.push(path);
        }
    };
    let deserializer = serde_ignored::Deserializer::new(value, &mut collect);
    let mut parsed = serde_path_to_error::deserialize(deserializer).map_err(located)?;
    *unknown_fields(&mut parsed) = unknown;
    Ok(parsed)
}

/// `spec.rules[0].from[0].source.principal`: the same spelling as other diagnostics.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn str_at<'a>(value: &'a serde_yaml::Value, keys: &[&str]) -> &'a str {
    let mut current = value;
    for key in keys {
        match current.get(*key) {
            Some(next) => current = next,
            None => return "",
        }
    }
    current.as_str().unwrap_or("")
}

/// `spec.selector.matchLabels` of a document that may not parse otherwise; `None` when absent,
/// empty or not a map of strings.
fn lenient_selector(value: &serde_yaml::Value) -> Option<BTreeMap<String, String>> {
    let labels = value
        .get("spec")?
        .get("selector")?
        .get("matchLabels")?
        .as_mapping()?;
    let labels: Option<BTreeMap<String, String>> = labels
        .iter()
        .map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect();
    labels.filter(|l| !l.is_empty())
}

fn parse_kind(kind: Kind, value: serde_yaml::Value) -> Result<Resource, (String, String)> {
    Ok(match kind {
        Kind::Namespace => Resource::Namespace(typed(value)?),
        Kind::Pod => Resource::Pod(typed(value)?),
        Kind::Service => Resource::Service(typed(value)?),
        Kind::EndpointSlice => Resource::EndpointSlice(typed(value)?),
        Kind::ServiceAccount => Resource::ServiceAccount(typed(value)?),
        Kind::AuthorizationPolicy => {
            Resource::AuthorizationPolicy(typed_security(value, |p: &mut AuthorizationPolicy| {
                &mut p.spec.unknown_fields
            })?)
        }
        Kind::PeerAuthentication => {
            Resource::PeerAuthentication(typed_security(value, |p: &mut PeerAuthentication| {
                &mut p.spec.unknown_fields
            })?)
        }
        Kind::RequestAuthentication => Resource::RequestAuthentication(typed_security(
            value,
            |r: &mut RequestAuthentication| &mut r.spec.unknown_fields,
        )?),
        Kind::VirtualService => Resource::VirtualService(typed(value)?),
        Kind::DestinationRule => Resource::DestinationRule(typed(value)?),
        Kind::ServiceEntry => Resource::ServiceEntry(typed(value)?),
        Kind::Gateway => Resource::Gateway(typed(value)?),
        Kind::HttpRoute => Resource::HttpRoute(typed(value)?),
        Kind::K8sGateway => Resource::K8sGateway(typed(value)?),
        Kind::Secret => Resource::TlsSecret(TlsSecret::from(typed::<Secret>(value)?)),
    })
}

fn is_cluster_scoped(kind: Kind) -> bool {
    kind == Kind::Namespace
}

/// Parses one document or API object. `Ok(None)` means a kind the mesh does not read. Fields
/// of an accepted object that Weft does not read are added to `notes` (the object still applies).
pub fn parse_document(
    origin: &str,
    value: serde_yaml::Value,
    notes: &mut Vec<Diagnostic>,
) -> Result<Option<(ObjectKey, Resource)>, Diagnostic> {
    let api_version = str_at(&value, &["apiVersion"]).to_string();
    let kind_name = str_at(&value, &["kind"]).to_string();
    let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
        return unread_mesh_kind(origin, &api_version, &kind_name, &value);
    };
    if kind == Kind::Secret && str_at(&value, &["type"]) != TLS_SECRET_TYPE {
        // Only server certificates are used; never hold other secrets in memory.
        return Ok(None);
    }
    let name = str_at(&value, &["metadata", "name"]).to_string();
    let mut namespace = str_at(&value, &["metadata", "namespace"]).to_string();
    if namespace.is_empty() && !is_cluster_scoped(kind) {
        namespace = "default".to_string();
    }
    let key = ObjectKey {
        kind,
        namespace,
        name,
    };
    let diagnostic = |field: &str, message: String| Diagnostic {
        origin: origin.to_string(),
        object: key.to_string(),
        field: field.to_string(),
        message,
    };
    if key.name.is_empty() {
        return Err(diagnostic("metadata.name", "missing".to_string()));
    }
    let selector = (kind == Kind::PeerAuthentication).then(|| lenient_selector(&value));
    // Only the kinds read back below: a Pod's or Secret's spec is not copied for nothing.
    let spec = READ_BACK_KINDS
        .contains(&kind)
        .then(|| value.get("spec").cloned())
        .flatten();
    match parse_kind(kind, value) {
        Ok(resource) => {
            if let (Some(spec), Some(read)) = (spec, read_back_spec(&resource)) {
                let mut unread = Vec::new();
                unread_fields(&spec, &read, "spec", &mut unread);
                notes.extend(unread.into_iter().map(|field| {
                    diagnostic(
                        &field,
                        "not read by weft; this field is ignored".to_string(),
                    )
                }));
            }
            Ok(Some((key, resource)))
        }
        Err((field, message)) if kind == Kind::PeerAuthentication => {
            let error = format!("field {field}: {message}");
            let selector = selector.flatten();
            let resource = Resource::BrokenPeerAuthentication { error, selector };
            Ok(Some((key, resource)))
        }
        Err((field, message)) => {
            if kind == Kind::AuthorizationPolicy {
                // Fail closed: the broken policy still occupies its key and denies.
                let error = format!("field {field}: {message}");
                let resource = Resource::BrokenAuthorizationPolicy { error };
                return Ok(Some((key, resource)));
            }
            Err(diagnostic(&field, message))
        }
    }
}

/// The kinds whose unread fields are reported ([`read_back_spec`]).
const READ_BACK_KINDS: [Kind; 6] = [
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::ServiceEntry,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::K8sGateway,
];

/// The `spec` of a routing or gateway object as Weft's type holds it, written back: a field of
/// the document that is not in it was dropped on parsing. The security kinds collect their
/// unknown fields themselves (`typed_security`); the Kubernetes core kinds are not checked.
fn read_back_spec(resource: &Resource) -> Option<serde_yaml::Value> {
    let spec = match resource {
        Resource::VirtualService(o) => serde_yaml::to_value(&o.spec),
        Resource::DestinationRule(o) => serde_yaml::to_value(&o.spec),
        Resource::ServiceEntry(o) => serde_yaml::to_value(&o.spec),
        Resource::Gateway(o) => serde_yaml::to_value(&o.spec),
        Resource::HttpRoute(o) => serde_yaml::to_value(&o.spec),
        Resource::K8sGateway(o) => serde_yaml::to_value(&o.spec),
        _ => return None,
    };
    spec.ok()
}

/// Paths (from `at`) of the keys of `written` that `read` does not have, where the value says
/// something (an empty list, map or string, `null`, `false` or 0 is what an absent field means).
/// Keys the types catch as unsupported are written back, and reported by the translation.
fn unread_fields(
    written: &serde_yaml::Value,
    read: &serde_yaml::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    use serde_yaml::Value;
    match (written, read) {
        (Value::Mapping(written), Value::Mapping(read)) => {
            let read: BTreeMap<String, &Value> = read
                .iter()
                .filter_map(|(k, v)| Some((key_text(k)?, v)))
                .collect();
            for (key, value) in written {
                let Some(key) = key_text(key) else { continue };
                let path = format!("{at}.{key}");
                match read.get(&key) {
                    Some(read) => unread_fields(value, read, &path, out),
                    None if says_something(value) => out.push(path),
                    None => {}
                }
            }
        }
        (Value::Sequence(written), Value::Sequence(read)) => {
            for (index, (written, read)) in written.iter().zip(read).enumerate() {
                unread_fields(written, read, &format!("{at}[{index}]"), out);
            }
        }
        (Value::Tagged(written), read) => unread_fields(&written.value, read, at, out),
        _ => {}
    }
}

fn key_text(key: &serde_yaml::Value) -> Option<String> {
    match key {
        serde_yaml::Value::String(text) => Some(text.clone()),
        serde_yaml::Value::Number(number) => Some(number.to_string()),
        serde_yaml::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn says_something(value: &serde_yaml::Value) -> bool {
    use serde_yaml::Value;
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64() != Some(0.0),
        Value::String(text) => !text.is_empty(),
        Value::Sequence(items) => !items.is_empty(),
        Value::Mapping(map) => !map.is_empty(),
        Value::Tagged(tagged) => says_something(&tagged.value),
    }
}

/// A kind Weft does not read: silence for the rest of Kubernetes (Deployments, ConfigMaps...),
/// but a diagnostic for Istio's and Gateway API's own kinds, since whoever wrote one expects the
/// mesh to act on it and it will not.
fn unread_mesh_kind(
    origin: &str,
    api_version: &str,
    kind: &str,
    value: &serde_yaml::Value,
) -> Result<Option<(ObjectKey, Resource)>, Diagnostic> {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let mesh_group = group.ends_with(".istio.io")
        || group == "gateway.networking.k8s.io"
        || group == "gateway.networking.x-k8s.io";
    if !mesh_group {
        return Ok(None);
    }
    let why = match kind {
        "EnvoyFilter" | "WasmPlugin" => "Weft has no Envoy to patch or extend",
        "Sidecar" => "ambient mode has no sidecars (Istio ambient ignores it too)",
        "Telemetry" => "Weft's metrics and access logs are not configurable by Telemetry",
        _ => "Weft does not read this kind",
    };
    let namespace = str_at(value, &["metadata", "namespace"]);
    let name = str_at(value, &["metadata", "name"]);
    Err(Diagnostic {
        origin: origin.to_string(),
        object: format!("{kind} {namespace}/{name}"),
        field: "kind".to_string(),
        message: format!("{kind} ({group}) is not supported: {why}; it has no effect"),
    })
}

/// Parses a multi-document YAML text from `origin` (a file path).
/// Returns whether the whole text was read: `false` when a YAML syntax error stopped it (the
/// documents after the error are not read).
pub fn parse_yaml(origin: &str, text: &str, out: &mut Parsed) -> bool {
    use serde::Deserialize;
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_origin = format!("{origin}#{index}");
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(err) => {
                out.diagnostics.push(Diagnostic {
                    origin: doc_origin,
                    object: "document".to_string(),
                    field: "-".to_string(),
                    message: format!("invalid yaml: {err}"),
                });
                // The YAML stream cannot be resynchronised after a syntax error.
                return false;
            }
        };
        match parse_document(&doc_origin, value, &mut out.diagnostics) {
            Ok(Some((key, resource))) => out.objects.push((key, doc_origin, resource)),
            Ok(None) => {}
            Err(diagnostic) => out.diagnostics.push(diagnostic),
        }
    }
    true
}

/// The key of a typed Kubernetes object (used by the watchers).
pub fn key_of<K: kube::Resource>(kind: Kind, object: &K) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_and_gateway_kinds_weft_does_not_read_are_reported() {
        let text = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua, namespace: app}
spec: {configPatches: []}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: app}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: app}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: app}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
"#;
        let mut parsed = Parsed::default();
        parse_yaml("dir/app.yaml", text, &mut parsed);
        let objects: Vec<&str> = parsed
            .diagnostics
            .iter()
            .map(|d| d.object.as_str())
            .collect();
        assert_eq!(
            objects,
            [
                "EnvoyFilter app/lua",
                "Sidecar app/default",
                "Telemetry istio-system/mesh-default",
                "GRPCRoute app/grpc"
            ],
            "Kubernetes' own kinds stay quiet"
        );
        assert!(parsed.diagnostics[0].message.contains("no Envoy"));
        assert!(parsed.objects.is_empty());
    }

    #[test]
    fn parses_known_kinds_and_skips_others() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: app}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: [app]}}]}]
"#;
        let mut parsed = Parsed::default();
        parse_yaml("dir/app.yaml", text, &mut parsed);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let keys: Vec<String> = parsed.objects.iter().map(|o| o.0.to_string()).collect();
        assert_eq!(keys, ["Namespace app", "AuthorizationPolicy app/allow-web"]);
        assert_eq!(parsed.objects[1].1, "dir/app.yaml#2");
    }

    #[test]
    fn bad_document_names_origin_object_and_field_and_keeps_the_rest() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: app}
spec:
  host: reviews
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: many}}
---
apiVersion: v1
kind: Namespace
metadata: {name: app}
"#;
        let mut parsed = Parsed::default();
        parse_yaml("cfg/dr.yaml", text, &mut parsed);
        assert_eq!(parsed.objects.len(), 1);
        let diag = &parsed.diagnostics[0];
        assert_eq!(diag.origin, "cfg/dr.yaml#0");
        assert_eq!(diag.object, "DestinationRule app/reviews");
        assert_eq!(
            diag.field,
            "spec.trafficPolicy.outlierDetection.consecutive5xxErrors"
        );
    }

    #[test]
    fn unparseable_authorization_policy_is_kept_as_broken() {
        let text = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: app}
spec: {action: DENNY}
"#;
        let mut parsed = Parsed::default();
        parse_yaml("p.yaml", text, &mut parsed);
        assert!(matches!(
            &parsed.objects[0].2,
            Resource::BrokenAuthorizationPolicy { error } if error.contains("spec.action")
        ));
    }

    #[test]
    fn yaml_syntax_error_is_reported() {
        let mut parsed = Parsed::default();
        parse_yaml("x.yaml", "kind: [unclosed", &mut parsed);
        assert!(parsed.diagnostics[0].message.starts_with("invalid yaml"));
    }
}
