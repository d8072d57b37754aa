//! A feed saved as a file: the very messages mesh-control streams (`NodeUpdate`,
//! `WaypointConfig`), written as YAML or JSON in the proto3 JSON mapping (field names in
//! camelCase, enums by name, `bytes` as base64, 64-bit integers as strings).
//!
//! `mesh-control dump` writes such files; a node or waypoint started with one applies it through
//! the same conversion as a version received from mesh-control, so a file is exactly a saved
//! feed and there is no second configuration schema. A field the message does not have is an
//! error, never ignored.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

/// Why a saved feed could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FeedFileError {
    /// The file could not be read.
    #[error("reading saved feed {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not the expected message (the message names the field).
    #[error("saved feed {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    /// The message could not be written.
    #[error("writing saved feed: {0}")]
    Write(#[from] serde_yaml::Error),
}

/// Reads a message from YAML or JSON text (JSON is read as YAML); `origin` names it in errors.
pub fn parse<T: DeserializeOwned>(origin: &Path, text: &str) -> Result<T, FeedFileError> {
    serde_yaml::from_str(text).map_err(|source| FeedFileError::Parse {
        path: origin.to_path_buf(),
        source,
    })
}

/// Reads a message from the file at `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, FeedFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FeedFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// The message as YAML.
pub fn to_yaml<T: Serialize>(message: &T) -> Result<String, FeedFileError> {
    Ok(serde_yaml::to_string(message)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::proto::{address_bytes, control::v1 as pb};

    fn update() -> pb::NodeUpdate {
        let workload = pb::Workload {
            uid: "app/web-1".into(),
            name: "web-1".into(),
            namespace: "app".into(),
            addresses: vec![address_bytes(&"10.1.0.5".parse().unwrap())],
            node: "n1".into(),
            identity: "spiffe://cluster.local/ns/app/sa/web".into(),
            tunnel: pb::TunnelProtocol::Hbone as i32,
            mtls: pb::MtlsMode::Strict as i32,
            port_mtls: BTreeMap::from([(8080, pb::MtlsMode::Disable as i32)]),
            ..Default::default()
        };
        let policy = pb::Authorization {
            key: "app/deny".into(),
            action: pb::PolicyAction::Deny as i32,
            rules: vec![pb::Rule::default()],
            ..Default::default()
        };
        pb::NodeUpdate {
            feed_id: "f".into(),
            version: 7,
            reset: true,
            complete: true,
            upserts: [
                pb::resource::Kind::Workload(workload),
                pb::resource::Kind::Authorization(policy),
            ]
            .into_iter()
            .map(|kind| pb::Resource { kind: Some(kind) })
            .collect(),
            removals: vec![],
        }
    }

    #[test]
    fn a_message_survives_yaml_and_json() {
        let original = update();
        let yaml = to_yaml(&original).unwrap();
        // The proto3 JSON mapping: names of enums, camelCase fields.
        assert!(yaml.contains("MTLS_MODE_STRICT"), "{yaml}");
        assert!(yaml.contains("portMtls"), "{yaml}");
        let back: pb::NodeUpdate = parse(Path::new("t.yaml"), &yaml).unwrap();
        assert_eq!(back, original);
        let json = serde_json::to_string(&original).unwrap();
        let back: pb::NodeUpdate = parse(Path::new("t.json"), &json).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn unknown_fields_and_values_are_errors() {
        let path = Path::new("t.yaml");
        let typo = "version: 1\nupserts:\n- workload: {uid: a/b, mtsl: MTLS_MODE_STRICT}\n";
        let error = parse::<pb::NodeUpdate>(path, typo).unwrap_err().to_string();
        assert!(error.contains("mtsl"), "{error}");
        let bad_enum = "upserts:\n- workload: {uid: a/b, mtls: MTLS_MODE_STRIKT}\n";
        assert!(parse::<pb::NodeUpdate>(path, bad_enum).is_err());
        let huge = "version: 99999999999999999999999\n";
        assert!(parse::<pb::NodeUpdate>(path, huge).is_err());
    }

    #[test]
    fn a_file_that_cannot_be_read_names_its_path() {
        let error = read::<pb::NodeUpdate>(Path::new("/nonexistent/feed.yaml")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/feed.yaml"));
    }
}
