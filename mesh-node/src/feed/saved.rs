//! A node feed saved as a file (`mesh-control dump --node`): one complete `NodeUpdate` in the
//! proto3 JSON mapping ([`mesh_core::feed_file`]). The node applies it as it applies a version
//! streamed by mesh-control: the same [`FeedStore`](super::FeedStore) checks and the same
//! conversion ([`super::convert`]), with the same fail-closed rules.

use std::path::Path;

use mesh_core::{feed_file, proto::control::v1 as pb};

use super::{FeedError, FeedStore, MeshSnapshot};

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

#[cfg(test)]
mod tests {
    use mesh_core::proto::build;

    use super::*;
    use crate::{config::Config, feed::convert};

    fn workload(name: &str, ip: &str, node: &str) -> pb::Resource {
        let mut pod = build::workload("app", name, "web", ip.parse().unwrap(), node);
        pod.mtls = pb::MtlsMode::Strict as i32;
        pb::Resource {
            kind: Some(pb::resource::Kind::Workload(pod)),
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
        let mesh = convert::mesh(&base(), &read(file.path()).unwrap());
        assert!(mesh.warnings.is_empty(), "{:?}", mesh.warnings);
        let names: Vec<String> = mesh
            .state
            .workloads()
            .iter()
            .map(|w| w.name.clone())
            .collect();
        assert_eq!(names, ["web-1", "db-1"], "by address");
        assert_eq!(mesh.policies.len(), 1);
        // The same result as the live feed's path.
        let mut store = FeedStore::default();
        let live = store.apply(update).unwrap().unwrap();
        let from_feed = convert::mesh(&base(), &live);
        let view = |mesh: &convert::Mesh| {
            format!(
                "{:?} {:?} {:?}",
                mesh.state.workloads(),
                mesh.state.service("10.1.0.5".parse().unwrap()),
                mesh.policies
            )
        };
        assert_eq!(view(&mesh), view(&from_feed));
    }

    #[test]
    fn a_partial_or_broken_feed_is_refused() {
        let mut chunk = complete(vec![workload("web-1", "10.1.0.5", "n1")]);
        chunk.complete = false;
        let error = read(saved(&chunk).path()).unwrap_err();
        assert!(
            matches!(error, SavedFeedError::Incomplete { .. }),
            "{error}"
        );

        let empty = complete(vec![pb::Resource { kind: None }]);
        let error = read(saved(&empty).path()).unwrap_err();
        assert!(matches!(error, SavedFeedError::Apply { .. }), "{error}");

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "version: 1\nreset: true\ncomplete: true\nworkloads: []\n",
        )
        .unwrap();
        let error = read(file.path()).unwrap_err().to_string();
        assert!(error.contains("workloads"), "unknown field named: {error}");
    }
}
