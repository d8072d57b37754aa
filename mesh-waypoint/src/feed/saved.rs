//! A waypoint feed saved as a file (`mesh-control dump --waypoint`): one `WaypointConfig` in the
//! proto3 JSON mapping ([`mesh_core::feed_file`]), converted exactly as a version streamed by
//! mesh-control ([`super::convert`]), with the same fail-closed rules.

use std::path::Path;

use mesh_core::{
    feed_file::{self, FeedFileError},
    proto::control::v1 as pb,
};

use super::{convert, Converted, WaypointName};

/// The configuration of waypoint `me` in the saved feed at `path`, exactly as converted from a
/// live version.
pub fn load(path: &Path, me: &WaypointName) -> Result<Converted, FeedFileError> {
    let wire: pb::WaypointConfig = feed_file::read(path)?;
    Ok(convert(&wire, me))
}

/// [`load`], for a waypoint serving without HBONE (static mode, plain listener only): a
/// waypoint's mesh virtual hosts then serve the plain listener, selected by `Host` (and port,
/// 80 when not written); an ingress gateway's feed keeps its ingress routes there.
pub fn load_static(path: &Path, me: &WaypointName) -> Result<Converted, FeedFileError> {
    let mut converted = load(path, me)?;
    let ingress = &mut converted.waypoint.ingress_routes;
    if ingress.as_ref().is_some_and(Vec::is_empty) {
        *ingress = None;
    }
    Ok(converted)
}
