//! A node feed saved as a file (`mesh-control dump --node`): one complete `NodeUpdate` in the
//! proto3 JSON mapping ([`mesh_core::feed_file`]). The node applies it as it applies a version
//! streamed by mesh-control: the same [`FeedStore`](super::FeedStore) checks and the same
//! conversion ([`super::convert`]), with the same fail-closed rules.

use std::path::Path;

use mesh_core::{feed_file, proto::control::v1 as pb};

use super::{convert, FeedError, FeedStore, MeshSnapshot};
use crate::config::Config;

/// Why a saved feed could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SavedFeedError {
    /// The file is missing or not a `NodeUpdate`.
    #[error(transparent)]
    File(#[from] feed_file::FeedFileError),
    /// The update is not one complete version.
    #[error("saved feed {path}: {reason}")]
    Incomplete { path: String, reason: String },
    /// The update does not apply (e.g. a resource without a kind).
    #[error("saved feed {path}: {source}")]
    Apply {
        path: String,
        #[source]
        source: FeedError,
    },
    /// The node's config file also describes the mesh: which of the two is meant is unclear.
    #[error(
        "the config file lists workloads, services, waypoints or peer authentication and a \
         saved feed is given too; describe the mesh in one place"
    )]
    Ambiguous,
}

/// The snapshot in the saved feed at `path`.
pub fn read(path: &Path) -> Result<MeshSnapshot, SavedFeedError> {
    let update: pb::NodeUpdate = feed_file::read(path)?;
    snapshot(path, update)
}

fn snapshot(path: &Path, update: pb::NodeUpdate) -> Result<MeshSnapshot, SavedFeedError> {
    let path = path.display().to_string();
    let incomplete = |reason: &str| SavedFeedError::Incomplete {
        path: path.clone(),
        reason: reason.to_string(),
    };
    if !update.reset || !update.complete {
        return Err(incomplete(
            "not a complete version (reset and complete must be set), is it one chunk of a feed?",
        ));
    }
    if !update.removals.is_empty() {
        return Err(incomplete("a complete version removes nothing"));
    }
    let mut store = FeedStore::default();
    match store.apply(update) {
        Ok(Some(snapshot)) => Ok(MeshSnapshot::clone(&snapshot)),
        Ok(None) => Err(incomplete("the version did not complete")),
        Err(source) => Err(SavedFeedError::Apply { path, source }),
    }
}

/// `base` (this node's own settings) with the mesh of the saved feed at `path`, exactly as for
/// a version from mesh-control.
pub fn mesh(base: &Config, path: &Path) -> Result<convert::Mesh, SavedFeedError> {
    if describes_mesh(base) {
        return Err(SavedFeedError::Ambiguous);
    }
    let snapshot = read(path)?;
    Ok(convert::mesh(base, &snapshot))
}

fn describes_mesh(config: &Config) -> bool {
    !config.workloads.is_empty()
        || !config.services.is_empty()
        || !config.waypoints.is_empty()
        || config.peer_authentication != Default::default()
}

#[cfg(test)]
mod tests {
    use mesh_core::proto::address_bytes;

    use super::*;

    fn workload(name: &str, ip: &str, node: &str) -> pb::Resource {
        pb::Resource {
            kind: Some(pb::resource::Kind::Workload(pb::Workload {
                uid: format!("app/{name}"),
                name: name.into(),
                namespace: "app".into(),
                addresses: vec![address_bytes(&ip.parse().unwrap())],
                node: node.into(),
                service_account: "web".into(),
                identity: "spiffe://cluster.local/ns/app/sa/web".into(),
                tunnel: pb::TunnelProtocol::Hbone as i32,
                mtls: pb::MtlsMode::Strict as i32,
                ..Default::default()
            })),
        }
    }

    fn policy() -> pb::Resource {
        pb::Resource {
            kind: Some(pb::resource::Kind::Authorization(pb::Authorization {
                key: "app/deny-all".into(),
                name: "deny-all".into(),
                namespace: "app".into(),
                scope: pb::PolicyScope::Namespace as i32,
                action: pb::PolicyAction::Deny as i32,
                rules: vec![pb::Rule::default()],
                ..Default::default()
            })),
        }
    }

    fn saved(update: &pb::NodeUpdate) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), feed_file::to_yaml(update).unwrap()).unwrap();
        file
    }

    fn base() -> Config {
        Config::from_yaml("node_name: n1\n").unwrap()
    }

    fn complete(upserts: Vec<pb::Resource>) -> pb::NodeUpdate {
        pb::NodeUpdate {
            feed_id: "saved".into(),
            version: 1,
            reset: true,
            complete: true,
            upserts,
            removals: vec![],
        }
    }

    #[test]
    fn a_saved_feed_becomes_the_nodes_mesh_as_a_live_version_would() {
        let update = complete(vec![
            workload("web-1", "10.1.0.5", "n1"),
            workload("db-1", "10.1.0.6", "n2"),
            policy(),
        ]);
        let file = saved(&update);
        let mesh = mesh(&base(), file.path()).unwrap();
        assert!(mesh.warnings.is_empty(), "{:?}", mesh.warnings);
        let names: Vec<&str> = mesh
            .config
            .workloads
            .iter()
            .map(|w| w.name.as_str())
            .collect();
        assert_eq!(names, ["db-1", "web-1"]);
        assert_eq!(mesh.policies.len(), 1);
        // The same result as the live feed's path.
        let mut store = FeedStore::default();
        let live = store.apply(update).unwrap().unwrap();
        let from_feed = convert::mesh(&base(), &live);
        assert_eq!(format!("{mesh:?}"), format!("{from_feed:?}"));
    }

    #[test]
    fn a_partial_or_broken_feed_is_refused() {
        let mut chunk = complete(vec![workload("web-1", "10.1.0.5", "n1")]);
        chunk.complete = false;
        let error = mesh(&base(), saved(&chunk).path()).unwrap_err();
        assert!(
            matches!(error, SavedFeedError::Incomplete { .. }),
            "{error}"
        );

        let empty = complete(vec![pb::Resource { kind: None }]);
        let error = mesh(&base(), saved(&empty).path()).unwrap_err();
        assert!(matches!(error, SavedFeedError::Apply { .. }), "{error}");

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "version: 1\nreset: true\ncomplete: true\nworkloads: []\n",
        )
        .unwrap();
        let error = mesh(&base(), file.path()).unwrap_err().to_string();
        assert!(error.contains("workloads"), "unknown field named: {error}");
    }

    #[test]
    fn a_config_that_also_describes_the_mesh_is_ambiguous() {
        let file = saved(&complete(vec![]));
        let base = Config::from_yaml(
            "node_name: n1\nworkloads:\n- {name: a, namespace: app, service_account: a, ip: 10.1.0.7, node: n1}\n",
        )
        .unwrap();
        let error = mesh(&base, file.path()).unwrap_err();
        assert!(matches!(error, SavedFeedError::Ambiguous), "{error}");
    }
}
