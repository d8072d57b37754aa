//! Kubernetes watchers feeding the registry.
//!
//! One `kube-runtime` watcher per kind, over `DynamicObject`, so each object is parsed on its
//! own by the same code as the local directory: one malformed custom resource is reported and
//! never fails the list of its kind (and a malformed AuthorizationPolicy still fails closed).
//! A re-list (after a restart or a 410 Gone expiry, which the watcher handles) replaces the
//! kind's objects wholesale. Nothing is published until every kind finished its first list
//! ([`InitialSync`], which also says what is still missing and why).

pub mod root_cert;
mod sync;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use mesh_core::drain::DrainWatch;

use crate::crd::gateway::{HttpRoute, K8sGateway};
use crate::crd::networking::{DestinationRule, Gateway, ServiceEntry, VirtualService};
use crate::crd::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::registry::resource::parse_document;
use crate::registry::secret::TLS_SECRET_TYPE;
use crate::registry::{Kind, ObjectKey, Resource};
use crate::store::Store;

pub use self::sync::InitialSync;

/// Origin recorded for objects from the API server.
pub const ORIGIN: &str = "kubernetes";

/// Every kind the mesh watches.
pub const ALL_KINDS: [Kind; 15] = [
    Kind::Namespace,
    Kind::Pod,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::ServiceAccount,
    Kind::AuthorizationPolicy,
    Kind::PeerAuthentication,
    Kind::RequestAuthentication,
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::ServiceEntry,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::K8sGateway,
    Kind::Secret,
];

/// The API resource (group, version, plural) of a kind.
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Kind::PeerAuthentication => ApiResource::erase::<PeerAuthentication>(&()),
        Kind::RequestAuthentication => ApiResource::erase::<RequestAuthentication>(&()),
        Kind::VirtualService => ApiResource::erase::<VirtualService>(&()),
        Kind::DestinationRule => ApiResource::erase::<DestinationRule>(&()),
        Kind::ServiceEntry => ApiResource::erase::<ServiceEntry>(&()),
        Kind::Gateway => ApiResource::erase::<Gateway>(&()),
        Kind::HttpRoute => ApiResource::erase::<HttpRoute>(&()),
        Kind::K8sGateway => ApiResource::erase::<K8sGateway>(&()),
        Kind::Secret => ApiResource::erase::<Secret>(&()),
    }
}

/// The watch of a kind: Secrets are listed by type on the API server, so only server
/// certificates (`kubernetes.io/tls`) ever reach mesh-control, never every Secret of the cluster.
pub fn watcher_config(kind: Kind) -> watcher::Config {
    let config = watcher::Config::default();
    match kind {
        Kind::Secret => config.fields(&format!("type={TLS_SECRET_TYPE}")),
        _ => config,
    }
}

/// Parses a watched object (list items carry no apiVersion/kind; they are filled in).
fn to_resource(
    kind: Kind,
    ar: &ApiResource,
    object: &DynamicObject,
) -> Option<(ObjectKey, Resource)> {
    let mut value = serde_json::to_value(object).ok()?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), ar.api_version.clone().into());
        map.insert("kind".into(), ar.kind.clone().into());
    }
    let yaml = serde_yaml::to_value(&value).ok()?;
    let mut notes = Vec::new();
    let parsed = parse_document(ORIGIN, yaml, &mut notes);
    for note in notes {
        tracing::warn!(kind = kind.as_str(), diagnostic = %note, "field not read");
    }
    match parsed {
        Ok(parsed) => parsed,
        Err(diagnostic) => {
            tracing::warn!(kind = kind.as_str(), %diagnostic, "ignoring malformed object");
            None
        }
    }
}

fn key_of(kind: Kind, object: &DynamicObject) -> ObjectKey {
    let namespace = match (&object.metadata.namespace, kind) {
        (Some(ns), _) => ns.clone(),
        (None, Kind::Namespace) => String::new(),
        (None, _) => "default".to_string(),
    };
    ObjectKey {
        kind,
        namespace,
        name: object.metadata.name.clone().unwrap_or_default(),
    }
}

/// Applies one watcher event to the store; `buffer` collects a re-list in progress.
fn apply_event(
    kind: Kind,
    ar: &ApiResource,
    event: Event<DynamicObject>,
    buffer: &mut Vec<(ObjectKey, Resource)>,
    store: &Store,
    sync: &InitialSync,
) {
    match event {
        Event::Init => buffer.clear(),
        Event::InitApply(object) => buffer.extend(to_resource(kind, ar, &object)),
        Event::InitDone => {
            let objects = std::mem::take(buffer);
            tracing::debug!(kind = kind.as_str(), count = objects.len(), "listed");
            store.update(|r| r.replace_kind(kind, objects, ORIGIN));
            sync.done(kind);
        }
        Event::Apply(object) => match to_resource(kind, ar, &object) {
            Some((key, resource)) => store.update(|r| r.upsert(key, ORIGIN, resource)),
            // Unparseable now: drop the stale version rather than keep acting on it.
            None => {
                store.update(|r| r.remove(&key_of(kind, &object)));
            }
        },
        Event::Delete(object) => {
            store.update(|r| r.remove(&key_of(kind, &object)));
        }
    }
}

/// The API server does not serve the kind (its CRD is not installed): there can be no such
/// objects, so count the kind as synced and empty instead of never becoming ready. The
/// watcher keeps retrying and picks the kind up once the CRD is installed.
fn not_installed(kind: Kind, store: &Store, sync: &InitialSync) {
    if sync.is_pending(kind) {
        tracing::warn!(
            kind = kind.as_str(),
            "kind not served by the api server (crd not installed?), treating as empty"
        );
        store.update(|r| r.replace_kind(kind, Vec::new(), ORIGIN));
        sync.done(kind);
    }
}

/// Watches one kind until drain. Errors (API server unreachable, CRD not installed) are
/// logged and retried with backoff by the watcher.
pub async fn watch_kind(
    client: Client,
    kind: Kind,
    store: Arc<Store>,
    sync: Arc<InitialSync>,
    mut drain: DrainWatch,
) {
    let ar = api_resource(kind);
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let stream = watcher::watcher(api, watcher_config(kind)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut buffer = Vec::new();
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = drain.signaled() => return,
        };
        match item {
            Some(Ok(event)) => apply_event(kind, &ar, event, &mut buffer, &store, &sync),
            Some(Err(watcher::Error::InitialListFailed(kube::Error::Api(status))))
                if status.is_not_found() =>
            {
                not_installed(kind, &store, &sync);
            }
            Some(Err(err)) => {
                tracing::warn!(kind = kind.as_str(), error = %err, "watch failed, retrying");
                sync.failed(kind, &err.to_string());
            }
            None => return,
        }
    }
}

/// Starts a watcher per kind; returns their task handles and the initial sync they report to.
pub fn spawn_all(
    client: &Client,
    kinds: &[Kind],
    store: &Arc<Store>,
    drain: &DrainWatch,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<InitialSync>) {
    let sync = InitialSync::new(kinds, Arc::clone(store));
    let tasks = kinds
        .iter()
        .map(|kind| {
            let task = watch_kind(
                client.clone(),
                *kind,
                Arc::clone(store),
                Arc::clone(&sync),
                drain.clone(),
            );
            tokio::spawn(task)
        })
        .collect();
    (tasks, sync)
}

#[cfg(test)]
mod tests;
