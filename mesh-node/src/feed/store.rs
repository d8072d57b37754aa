//! Applying `NodeUpdate` messages: a version may span several messages, and the node only ever
//! acts on a complete one.

use std::{collections::BTreeMap, sync::Arc};

use mesh_core::proto::control::v1 as pb;

/// The mesh as of one complete feed version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshSnapshot {
    /// Feed instance (changes when mesh-control restarts with fresh state).
    pub feed_id: String,
    /// Version within the feed instance.
    pub version: u64,
    /// Workloads by uid (`<namespace>/<pod>`).
    pub workloads: BTreeMap<String, pb::Workload>,
    /// Services by key (`<namespace>/<hostname>`).
    pub services: BTreeMap<String, pb::Service>,
    /// Authorization policies by key (`<namespace>/<name>`).
    pub authorizations: BTreeMap<String, pb::Authorization>,
}

impl MeshSnapshot {
    /// A snapshot of `workloads` and `services`, as a feed version holding them would be (tests
    /// and tools; build the messages with [`mesh_core::proto::build`]).
    pub fn of(
        workloads: impl IntoIterator<Item = pb::Workload>,
        services: impl IntoIterator<Item = pb::Service>,
    ) -> Self {
        let mut snapshot = Self::default();
        for workload in workloads {
            snapshot.insert_workload(workload);
        }
        for service in services {
            snapshot.insert_service(service);
        }
        snapshot
    }

    /// Adds or replaces a workload (by uid).
    pub fn insert_workload(&mut self, workload: pb::Workload) {
        self.workloads.insert(workload.uid.clone(), workload);
    }

    /// Adds or replaces a service (by key).
    pub fn insert_service(&mut self, service: pb::Service) {
        self.services.insert(service.key.clone(), service);
    }

    /// Adds or replaces an authorization policy (by key).
    pub fn insert_authorization(&mut self, policy: pb::Authorization) {
        self.authorizations.insert(policy.key.clone(), policy);
    }
}

/// An update that does not fit the stream so far; the client resubscribes from scratch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// A non-reset update from another feed instance.
    #[error("update from feed {got:?} while following feed {expected:?} without a reset")]
    FeedChanged { expected: String, got: String },
    /// A version at or below one already applied.
    #[error("update version {got} is not after applied version {applied}")]
    StaleVersion { applied: u64, got: u64 },
    /// A new version started before the previous one completed.
    #[error("version {got} started while version {pending} was incomplete")]
    Interleaved { pending: u64, got: u64 },
    /// A resource without a kind.
    #[error("upsert without a resource in version {version}")]
    EmptyResource { version: u64 },
}

/// The applied state and the version being assembled.
#[derive(Debug, Default)]
pub struct FeedStore {
    applied: Arc<MeshSnapshot>,
    pending: Option<MeshSnapshot>,
}

impl FeedStore {
    /// The last complete snapshot (empty before the first).
    pub fn applied(&self) -> &Arc<MeshSnapshot> {
        &self.applied
    }

    /// What to send as `feed_id`/`resume_version` when (re)subscribing.
    pub fn resume_point(&self) -> (String, u64) {
        (self.applied.feed_id.clone(), self.applied.version)
    }

    /// Drops a half-received version (the stream broke mid-version).
    pub fn abandon_pending(&mut self) {
        self.pending = None;
    }

    /// Applies one message; returns the new snapshot when it completes a version.
    pub fn apply(
        &mut self,
        update: pb::NodeUpdate,
    ) -> Result<Option<Arc<MeshSnapshot>>, FeedError> {
        let mut pending = match self.pending.take() {
            Some(pending) => self.continue_pending(pending, &update)?,
            None => self.start_pending(&update)?,
        };
        for resource in update.upserts {
            upsert(&mut pending, resource, update.version)?;
        }
        for removal in update.removals {
            remove(&mut pending, &removal);
        }
        if update.complete {
            let snapshot = Arc::new(pending);
            self.applied = snapshot.clone();
            return Ok(Some(snapshot));
        }
        self.pending = Some(pending);
        Ok(None)
    }

    fn start_pending(&self, update: &pb::NodeUpdate) -> Result<MeshSnapshot, FeedError> {
        if update.reset {
            return Ok(MeshSnapshot {
                feed_id: update.feed_id.clone(),
                version: update.version,
                ..MeshSnapshot::default()
            });
        }
        if update.feed_id != self.applied.feed_id {
            return Err(FeedError::FeedChanged {
                expected: self.applied.feed_id.clone(),
                got: update.feed_id.clone(),
            });
        }
        if update.version <= self.applied.version {
            return Err(FeedError::StaleVersion {
                applied: self.applied.version,
                got: update.version,
            });
        }
        let mut next = MeshSnapshot::clone(&self.applied);
        next.version = update.version;
        Ok(next)
    }

    fn continue_pending(
        &self,
        pending: MeshSnapshot,
        update: &pb::NodeUpdate,
    ) -> Result<MeshSnapshot, FeedError> {
        if update.version != pending.version || update.feed_id != pending.feed_id || update.reset {
            return Err(FeedError::Interleaved {
                pending: pending.version,
                got: update.version,
            });
        }
        Ok(pending)
    }
}

fn upsert(
    snapshot: &mut MeshSnapshot,
    resource: pb::Resource,
    version: u64,
) -> Result<(), FeedError> {
    match resource.kind {
        Some(pb::resource::Kind::Workload(workload)) => snapshot.insert_workload(workload),
        Some(pb::resource::Kind::Service(service)) => snapshot.insert_service(service),
        Some(pb::resource::Kind::Authorization(policy)) => snapshot.insert_authorization(policy),
        None => return Err(FeedError::EmptyResource { version }),
    }
    Ok(())
}

fn remove(snapshot: &mut MeshSnapshot, key: &pb::ResourceKey) {
    match pb::ResourceKind::try_from(key.kind) {
        Ok(pb::ResourceKind::Workload) => {
            snapshot.workloads.remove(&key.key);
        }
        Ok(pb::ResourceKind::Service) => {
            snapshot.services.remove(&key.key);
        }
        Ok(pb::ResourceKind::Authorization) => {
            snapshot.authorizations.remove(&key.key);
        }
        // Unknown kinds come from a newer control plane; nothing of ours to remove.
        Ok(pb::ResourceKind::Unspecified) | Err(_) => {}
    }
}
