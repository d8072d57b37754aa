//! The registry: every Kubernetes-shaped object the mesh reads, and their translation into the
//! mesh's model ([`Snapshot`]).
//!
//! Sources (the local directory, the Kubernetes watchers) put objects in; [`Registry::snapshot`]
//! translates all of them at once. Translation is per object: a resource that fails validation
//! is dropped (or, for authorization policy, turned into a deny-all: fail closed) with a
//! [`Diagnostic`] naming its origin, object and field, and never affects the others.

pub mod duration;
pub mod policy;
pub mod request_authn;
pub mod resource;
pub mod routes;
pub mod secret;
pub mod services;
pub mod workloads;

use std::collections::BTreeMap;

use mesh_core::authz::PathNormalization;

pub use resource::{parse_yaml, Kind, ObjectKey, Parsed, Resource};

use crate::model::{Diagnostic, Snapshot};

/// Settings that shape translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// SPIFFE trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Namespace whose unselected policies apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
    /// DNS suffix of services, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// How waypoints normalize request paths (Istio's mesh-wide `pathNormalization`).
    pub path_normalization: PathNormalization,
    /// Mesh-wide: same-node connections always go over mTLS, whatever namespaces say.
    pub always_encrypt_same_node: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_string(),
            root_namespace: "istio-system".to_string(),
            cluster_domain: "cluster.local".to_string(),
            path_normalization: PathNormalization::default(),
            always_encrypt_same_node: false,
        }
    }
}

/// An object with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// File and document (`dir/a.yaml#0`) or `kubernetes`.
    pub origin: String,
    /// The object.
    pub resource: Resource,
}

/// All objects from all sources.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    config: RegistryConfig,
    objects: BTreeMap<ObjectKey, Stored>,
    source_diagnostics: Vec<Diagnostic>,
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            objects: BTreeMap::new(),
            source_diagnostics: Vec::new(),
        }
    }

    /// The translation settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Replaces everything with one source's parse result (local-directory mode). When two
    /// documents define the same object, the first (in path order) wins and the second is
    /// reported.
    pub fn replace_all(&mut self, parsed: Parsed) {
        self.objects.clear();
        self.source_diagnostics = parsed.diagnostics;
        for (key, origin, resource) in parsed.objects {
            if let Some(existing) = self.objects.get(&key) {
                self.source_diagnostics.push(Diagnostic {
                    object: key.to_string(),
                    field: "metadata.name".to_string(),
                    message: format!("duplicate object, already defined in {}", existing.origin),
                    origin,
                });
                continue;
            }
            self.objects.insert(key, Stored { origin, resource });
        }
    }

    /// Adds or replaces one object (watcher event).
    pub fn upsert(&mut self, key: ObjectKey, origin: &str, resource: Resource) {
        let origin = origin.to_string();
        self.objects.insert(key, Stored { origin, resource });
    }

    /// Removes one object (watcher event).
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        self.objects.remove(key).is_some()
    }

    /// Replaces every object of one kind (watcher re-list after a restart or 410 Gone).
    pub fn replace_kind(&mut self, kind: Kind, objects: Vec<(ObjectKey, Resource)>, origin: &str) {
        self.objects.retain(|key, _| key.kind != kind);
        for (key, resource) in objects {
            self.upsert(key, origin, resource);
        }
    }

    /// The Namespace objects held, in name order.
    pub fn namespaces(&self) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Namespace> {
        of_kind(&self.objects, Kind::Namespace).filter_map(|(_, stored)| match &stored.resource {
            Resource::Namespace(ns) => Some(ns),
            _ => None,
        })
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no objects are held.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Translates every object into the mesh model.
    pub fn snapshot(&self) -> Snapshot {
        let ctx = Ctx {
            config: &self.config,
            objects: &self.objects,
        };
        let mut diagnostics = self.source_diagnostics.clone();
        let mut diags = Diagnostics::new(&mut diagnostics);
        let mut snapshot = Snapshot {
            path_normalization: self.config.path_normalization,
            ..Snapshot::default()
        };
        let selectors = policy::translate_policies(&ctx, &mut snapshot.policies, &mut diags);
        let peers = policy::translate_peer_authentications(&ctx, &mut diags);
        snapshot.request_authns = request_authn::translate(&ctx, &mut diags);
        let waypoints = services::waypoint_addresses(&ctx);
        let inputs = workloads::Inputs {
            selectors: &selectors,
            peers: &peers,
            waypoints: &waypoints,
        };
        snapshot.workloads = workloads::translate(&ctx, &inputs, &mut diags);
        services::translate(&ctx, &waypoints, &mut snapshot, &mut diags);
        routes::translate(&ctx, &mut snapshot, &mut diags);
        drop(diags);
        snapshot.diagnostics = diagnostics;
        snapshot
    }
}

/// Objects of one kind, in key order.
fn of_kind(
    objects: &BTreeMap<ObjectKey, Stored>,
    kind: Kind,
) -> impl Iterator<Item = (&ObjectKey, &Stored)> {
    let start = ObjectKey {
        kind,
        namespace: String::new(),
        name: String::new(),
    };
    objects
        .range(start..)
        .take_while(move |(key, _)| key.kind == kind)
}

/// Read access to the objects during one translation.
pub struct Ctx<'a> {
    config: &'a RegistryConfig,
    objects: &'a BTreeMap<ObjectKey, Stored>,
}

impl<'a> Ctx<'a> {
    /// Objects of one kind, in key order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&'a ObjectKey, &'a Stored)> {
        of_kind(self.objects, kind)
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&'a Stored> {
        self.objects.get(&ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// Labels of a namespace (empty when the Namespace object is absent).
    pub fn namespace_labels(&self, namespace: &str) -> &'a BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        match self
            .get(Kind::Namespace, "", namespace)
            .map(|s| &s.resource)
        {
            Some(Resource::Namespace(ns)) => ns.metadata.labels.as_ref().unwrap_or(&EMPTY),
            _ => &EMPTY,
        }
    }

    /// The FQDN of a service host as written in a resource in `namespace`: a short name
    /// (`reviews`) becomes `reviews.<namespace>.svc.<cluster domain>`; dotted names and
    /// wildcards (`*`) are kept.
    pub fn fqdn(&self, host: &str, namespace: &str) -> String {
        if host.contains('.') || host.starts_with('*') {
            host.to_string()
        } else {
            format!("{host}.{namespace}.svc.{}", self.config.cluster_domain)
        }
    }
}

/// Collects diagnostics for the object being translated.
pub struct Diagnostics<'a> {
    out: &'a mut Vec<Diagnostic>,
    origin: String,
}

impl<'a> Diagnostics<'a> {
    fn new(out: &'a mut Vec<Diagnostic>) -> Self {
        Self {
            out,
            origin: String::new(),
        }
    }

    /// Sets the origin for the following diagnostics.
    pub fn set_origin(&mut self, origin: &str) {
        origin.clone_into(&mut self.origin);
    }

    /// Records a problem with `field` of `key`.
    pub fn push(&mut self, key: &ObjectKey, field: &str, message: &str) {
        self.out.push(Diagnostic {
            origin: self.origin.clone(),
            object: key.to_string(),
            field: field.to_string(),
            message: message.to_string(),
        });
    }
}

#[cfg(test)]
mod tests;
