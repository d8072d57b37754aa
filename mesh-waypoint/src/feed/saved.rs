//! A waypoint feed saved as a file (`mesh-control dump --waypoint`): one `WaypointConfig` in the
//! proto3 JSON mapping ([`mesh_core::feed_file`]), converted exactly as a version streamed by
//! mesh-control ([`super::convert`]), with the same fail-closed rules.

use std::path::Path;

use mesh_core::{
    feed_file::{self, FeedFileError},
    proto::control::v1 as pb,
};

use super::{convert, Converted, WaypointName};

/// The configuration of waypoint `me` in the saved feed at `path`.
pub fn load(path: &Path, me: &WaypointName) -> Result<Converted, FeedFileError> {
    let wire: pb::WaypointConfig = feed_file::read(path)?;
    Ok(convert(&wire, me))
}
