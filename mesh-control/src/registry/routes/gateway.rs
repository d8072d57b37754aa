//! Istio `Gateway` servers and Gateway API `Gateway` listeners into [`GatewayListener`]s,
//! with the certificate of each HTTPS one.
//!
//! TLS is terminated with a `kubernetes.io/tls` Secret of the Gateway's namespace: Istio
//! `tls: {mode: SIMPLE, credentialName}`, Gateway API `tls: {mode: Terminate, certificateRefs}`.
//! Any other mode, a missing or broken Secret, or a Secret of another namespace leaves that one
//! listener out with a diagnostic naming the field (never served as something else); the other
//! listeners of the Gateway stay. A bad port still rejects the whole Gateway.

use std::collections::BTreeMap;

use super::common::{invalid, port, Invalid};
use crate::crd::gateway::{K8sGateway, Listener, ListenerTls, SecretObjectReference};
use crate::crd::networking::{Gateway as IstioGateway, Server, ServerTlsSettings};
use crate::model::{Gateway, GatewayListener, ServerTls};
use crate::registry::secret::server_tls;
use crate::registry::{Ctx, Kind, ObjectKey, Resource};

/// The label Istio puts on the pods of the deployment it creates for a Gateway API Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

const NO_CREDENTIAL: &str =
    "required with mode SIMPLE (file-mounted serverCertificate/privateKey are not supported)";
const HTTPS_WITHOUT_TLS: &str = "an HTTPS server needs tls with mode SIMPLE and credentialName";
const TLS_PROTOCOL: &str = "TLS servers (SNI passthrough, TCP over TLS) are not supported by weft; use HTTPS with tls.mode SIMPLE";

/// A translated Gateway and the listeners left out of it (field, reason).
pub type Translated = (Gateway, Vec<Invalid>);

/// The certificate of Secret `namespace/name`, validated.
fn secret_tls(ctx: &Ctx<'_>, namespace: &str, name: &str, at: &str) -> Result<ServerTls, Invalid> {
    let secret = format!("{namespace}/{name}");
    match ctx.get(Kind::Secret, namespace, name).map(|s| &s.resource) {
        Some(Resource::TlsSecret(tls)) => {
            server_tls(&secret, tls).map_err(|e| invalid(at, e.to_string()))
        }
        _ => Err(invalid(
            at,
            format!("secret {secret} of type kubernetes.io/tls not found"),
        )),
    }
}

/// Istio `SIMPLE` TLS with the Secret named by `credentialName`.
fn simple(
    ctx: &Ctx<'_>,
    ns: &str,
    tls: &ServerTlsSettings,
    at: &str,
) -> Result<ServerTls, Invalid> {
    // Istio's default mode (the enum's zero value) is PASSTHROUGH.
    let mode = tls.mode.as_deref().unwrap_or("PASSTHROUGH");
    if mode != "SIMPLE" {
        let message = format!("{mode:?} is not supported by weft (only SIMPLE: terminate TLS with the credentialName secret)");
        return Err(invalid(format!("{at}.tls.mode"), message));
    }
    let field = format!("{at}.tls.credentialName");
    match tls.credential_name.as_deref().filter(|n| !n.is_empty()) {
        None => Err(invalid(field, NO_CREDENTIAL)),
        Some(name) if name.contains('/') => {
            let message =
                format!("{name:?}: only secrets of the gateway's namespace are supported");
            Err(invalid(field, message))
        }
        Some(name) => secret_tls(ctx, ns, name, &field),
    }
}

/// The certificate of an Istio server: required for HTTPS, refused on other protocols.
fn istio_server_tls(
    ctx: &Ctx<'_>,
    ns: &str,
    server: &Server,
    at: &str,
) -> Result<Option<ServerTls>, Invalid> {
    let protocol = server.port.protocol.to_ascii_uppercase();
    let terminates = server
        .tls
        .as_ref()
        .filter(|t| t.mode.is_some() || t.credential_name.is_some());
    match (protocol.as_str(), &server.tls) {
        ("HTTPS", Some(tls)) => simple(ctx, ns, tls, at).map(Some),
        ("HTTPS", None) => Err(invalid(format!("{at}.tls"), HTTPS_WITHOUT_TLS)),
        ("TLS", _) => Err(invalid(format!("{at}.port.protocol"), TLS_PROTOCOL)),
        _ if terminates.is_some() => {
            let message =
                format!("tls on a {protocol} server is not supported; use protocol HTTPS");
            Err(invalid(format!("{at}.tls.mode"), message))
        }
        _ => Ok(None),
    }
}

/// An Istio Gateway: every server (its hosts as written, `[<namespace>/]<host>`).
pub fn istio(ctx: &Ctx<'_>, key: &ObjectKey, gw: &IstioGateway) -> Result<Translated, Invalid> {
    let mut listeners = Vec::new();
    let mut skipped = Vec::new();
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let at = format!("spec.servers[{i}]");
        let number = port(server.port.number, &format!("{at}.port.number"))?;
        match istio_server_tls(ctx, &key.namespace, server, &at) {
            Ok(tls) => listeners.push(GatewayListener {
                port: number,
                protocol: server.port.protocol.clone(),
                hosts: server.hosts.clone(),
                tls,
            }),
            Err(why) => skipped.push(why),
        }
    }
    let gateway = Gateway {
        key: format!("{}/{}", key.namespace, key.name),
        selector: gw.spec.selector.clone(),
        listeners,
    };
    Ok((gateway, skipped))
}

/// A Gateway API listener's hosts in the model's `<namespace rule>/<host>` form: routes of the
/// Gateway's namespace (`.`, the default) or of every namespace (`*`).
fn listener_hosts(listener: &Listener, at: &str) -> Result<String, Invalid> {
    let from = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let namespaces = match from.and_then(|n| n.from.as_deref()) {
        None | Some("Same") => ".",
        Some("All") => "*",
        Some(other) => {
            let message = format!("{other:?} is not supported by weft yet (use Same or All)");
            return Err(invalid(
                format!("{at}.allowedRoutes.namespaces.from"),
                message,
            ));
        }
    };
    let host = listener
        .hostname
        .as_deref()
        .unwrap_or("*")
        .to_ascii_lowercase();
    Ok(format!("{namespaces}/{host}"))
}

/// The Secret a certificate reference names, if it is one weft can read.
fn secret_ref(
    ctx: &Ctx<'_>,
    ns: &str,
    r: &SecretObjectReference,
    at: &str,
) -> Result<ServerTls, Invalid> {
    let kind_ok = matches!(r.kind.as_deref(), None | Some("Secret"));
    if !kind_ok || !matches!(r.group.as_deref(), None | Some("")) {
        let what = format!(
            "{}/{}",
            r.group.as_deref().unwrap_or(""),
            r.kind.as_deref().unwrap_or("Secret")
        );
        return Err(invalid(
            format!("{at}.kind"),
            format!("{what:?}: only core Secrets are supported"),
        ));
    }
    if let Some(other) = r.namespace.as_deref().filter(|n| *n != ns) {
        let message = format!("secret namespace {other:?} differs from the gateway's: that needs a ReferenceGrant, which weft does not support");
        return Err(invalid(format!("{at}.namespace"), message));
    }
    secret_tls(ctx, ns, &r.name, &format!("{at}.name"))
}

/// The certificate of a Gateway API HTTPS listener (`Terminate`, the first certificate ref).
fn terminate(
    ctx: &Ctx<'_>,
    ns: &str,
    tls: Option<&ListenerTls>,
    at: &str,
) -> Result<ServerTls, Invalid> {
    let Some(tls) = tls else {
        return Err(invalid(
            format!("{at}.tls"),
            "an HTTPS listener needs tls.certificateRefs",
        ));
    };
    let mode = tls.mode.as_deref().unwrap_or("Terminate");
    if mode != "Terminate" {
        let message = format!("{mode:?} is not supported by weft (only Terminate)");
        return Err(invalid(format!("{at}.tls.mode"), message));
    }
    match tls.certificate_refs.first() {
        Some(first) => secret_ref(ctx, ns, first, &format!("{at}.tls.certificateRefs[0]")),
        None => Err(invalid(
            format!("{at}.tls.certificateRefs"),
            "required with mode Terminate",
        )),
    }
}

/// A Gateway API Gateway: its HTTP(S) listeners (others carry route kinds Weft does not read),
/// served by the pods Istio labels with the Gateway's name.
pub fn k8s(ctx: &Ctx<'_>, key: &ObjectKey, gw: &K8sGateway) -> Result<Translated, Invalid> {
    let mut listeners = Vec::new();
    let mut skipped = Vec::new();
    for (i, listener) in gw.spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        let number = port(listener.port, &format!("{at}.port"))?;
        let tls = match listener.protocol.as_str() {
            "HTTP" => None,
            "HTTPS" => match terminate(ctx, &key.namespace, listener.tls.as_ref(), &at) {
                Ok(tls) => Some(tls),
                Err(why) => {
                    skipped.push(why);
                    continue;
                }
            },
            _ => continue,
        };
        let hosts = vec![listener_hosts(listener, &at)?];
        let protocol = listener.protocol.clone();
        listeners.push(GatewayListener {
            port: number,
            protocol,
            hosts,
            tls,
        });
    }
    let selector = BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), key.name.clone())]);
    let gateway = Gateway {
        key: format!("{}/{}", key.namespace, key.name),
        selector,
        listeners,
    };
    Ok((gateway, skipped))
}

/// `<at>.<name>` for a flagged field (when `flagged`) and for every unsupported key.
fn tls_fields<'a>(
    at: &str,
    flagged: Option<&'a str>,
    keys: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let named = flagged.into_iter().chain(keys.map(String::as_str));
    named.map(|name| format!("{at}.{name}")).collect()
}

/// Paths of TLS fields present that weft does not implement (reported as ignored).
pub fn unsupported(resource: &Resource) -> Vec<String> {
    let mut out = Vec::new();
    match resource {
        Resource::Gateway(gw) => {
            for (i, tls) in gw.spec.servers.iter().enumerate() {
                let Some(tls) = &tls.tls else { continue };
                let redirect = (tls.https_redirect == Some(true)).then_some("httpsRedirect");
                let at = format!("spec.servers[{i}].tls");
                out.extend(tls_fields(&at, redirect, tls.unsupported.keys()));
            }
        }
        Resource::K8sGateway(gw) => {
            for (i, listener) in gw.spec.listeners.iter().enumerate() {
                let Some(tls) = &listener.tls else { continue };
                let extra = (tls.certificate_refs.len() > 1).then_some("certificateRefs[1..]");
                let at = format!("spec.listeners[{i}].tls");
                out.extend(tls_fields(&at, extra, tls.unsupported.keys()));
            }
        }
        _ => {}
    }
    out
}
