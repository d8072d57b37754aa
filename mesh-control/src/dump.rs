//! `mesh-control dump`: the feed a node or a waypoint would receive for a directory of manifests,
//! written as a file (see `mesh_core::feed_file`). Nodes and waypoints started with such a file
//! apply it exactly as they apply a version streamed by mesh-control; tests, benchmarks and the
//! examples get their static files this way.

use std::{path::Path, sync::Arc};

use anyhow::{bail, Context};
use mesh_core::proto::control::v1 as pb;

use crate::{
    feed::{state::FeedState, waypoint},
    model::{Diagnostic, Snapshot},
    registry::{Registry, RegistryConfig},
    source::local,
};

/// Feed id of saved feeds: they are not part of any live feed's history.
pub const SAVED_FEED_ID: &str = "saved";

/// Whose feed to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The node feed. Every node receives the same one; the name is for the operator's record.
    Node(String),
    /// The feed of waypoint (or ingress gateway) `namespace/name`.
    Waypoint { namespace: String, name: String },
}

/// The snapshot mesh-control would publish for the manifests in `dir`, and its diagnostics.
pub fn snapshot_of_dir(dir: &Path, config: RegistryConfig) -> anyhow::Result<Snapshot> {
    let (parsed, _) = local::load_dir(dir)
        .with_context(|| format!("loading manifests from {}", dir.display()))?;
    let mut registry = Registry::new(config);
    registry.replace_all(parsed);
    Ok(registry.snapshot())
}

/// The node feed of `snapshot` as one complete version (a full resend).
pub fn node_feed(snapshot: Arc<Snapshot>) -> pb::NodeUpdate {
    let mut state = FeedState::new(SAVED_FEED_ID.to_string(), usize::MAX);
    state.apply(snapshot);
    let delta = state.delta(None);
    pb::NodeUpdate {
        feed_id: SAVED_FEED_ID.to_string(),
        version: delta.version.max(1),
        reset: true,
        complete: true,
        upserts: delta.upserts.iter().map(|r| (**r).clone()).collect(),
        removals: Vec::new(),
    }
}

/// The feed of waypoint `namespace/name` in `snapshot`.
pub fn waypoint_feed(snapshot: &Snapshot, namespace: &str, name: &str) -> pb::WaypointConfig {
    let mut config = waypoint::config_for(snapshot, namespace, name);
    config.feed_id = SAVED_FEED_ID.to_string();
    config.version = waypoint::content_version(&config);
    config
}

/// The saved feed of `target` for the manifests in `dir`, as YAML, with the diagnostics the
/// manifests raised (the caller prints them: they are what the live feed would also leave out).
pub fn dump(
    dir: &Path,
    config: RegistryConfig,
    target: &Target,
) -> anyhow::Result<(String, Vec<Diagnostic>)> {
    let snapshot = snapshot_of_dir(dir, config)?;
    let diagnostics = snapshot.diagnostics.clone();
    let yaml = match target {
        Target::Node(_) => mesh_core::feed_file::to_yaml(&node_feed(Arc::new(snapshot)))?,
        Target::Waypoint { namespace, name } => {
            let feed = waypoint_feed(&snapshot, namespace, name);
            if feed.services.is_empty() && feed.routes.is_empty() {
                bail!(
                    "no service is bound to waypoint {namespace}/{name} and no gateway route \
                     names it: its feed would be empty"
                );
            }
            mesh_core::feed_file::to_yaml(&feed)?
        }
    };
    Ok((yaml, diagnostics))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web}
status: {podIP: 10.1.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, name: http}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-1, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: n1, serviceAccountName: wp}
status: {podIP: 10.1.0.9}
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app}
spec: {clusterIP: 10.96.0.20, selector: {gateway.networking.k8s.io/gateway-name: wp}, ports: [{port: 15008, name: mesh}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: app}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-get, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

    fn dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), MANIFESTS).unwrap();
        dir
    }

    #[test]
    fn a_node_feed_reads_back_as_the_same_message() {
        let dir = dir();
        let (yaml, diagnostics) = dump(
            dir.path(),
            RegistryConfig::default(),
            &Target::Node("n1".into()),
        )
        .unwrap();
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let saved: pb::NodeUpdate =
            mesh_core::feed_file::parse(Path::new("saved.yaml"), &yaml).unwrap();
        assert!(saved.reset && saved.complete);
        let keys: Vec<String> = saved
            .upserts
            .iter()
            .filter_map(|r| match r.kind.as_ref()? {
                pb::resource::Kind::Workload(w) => Some(w.uid.clone()),
                pb::resource::Kind::Service(s) => Some(s.key.clone()),
                pb::resource::Kind::Authorization(a) => Some(a.key.clone()),
            })
            .collect();
        for key in [
            "app/web-1",
            "app/web.app.svc.cluster.local",
            "app/deny-all",
            "app/web-get",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        // What the live feed sends for the same manifests, message for message.
        let snapshot = snapshot_of_dir(dir.path(), RegistryConfig::default()).unwrap();
        assert_eq!(saved, node_feed(Arc::new(snapshot)));
    }

    #[test]
    fn a_waypoint_feed_has_its_services_and_an_unknown_waypoint_is_an_error() {
        let dir = dir();
        let target = Target::Waypoint {
            namespace: "app".into(),
            name: "wp".into(),
        };
        let (yaml, _) = dump(dir.path(), RegistryConfig::default(), &target).unwrap();
        let saved: pb::WaypointConfig =
            mesh_core::feed_file::parse(Path::new("saved.yaml"), &yaml).unwrap();
        assert_eq!(saved.services.len(), 1, "{saved:?}");
        assert_eq!(saved.services[0].name, "web");
        let policies: Vec<&str> = saved.policies.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            policies,
            ["app/web-get"],
            "the policy targeting its service"
        );

        let nobody = Target::Waypoint {
            namespace: "app".into(),
            name: "nope".into(),
        };
        let error = dump(dir.path(), RegistryConfig::default(), &nobody).unwrap_err();
        assert!(error.to_string().contains("app/nope"), "{error}");
        let missing = dump(
            Path::new("/nonexistent/weft"),
            RegistryConfig::default(),
            &Target::Node("n1".into()),
        );
        assert!(missing.is_err());
    }
}
