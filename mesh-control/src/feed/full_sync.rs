//! The node feed's full sync, encoded once per version and shared by every stream.
//!
//! When hundreds of nodes (re)connect at once, each needs the whole state. Encoding it per
//! stream multiplies CPU by the number of nodes; instead the first stream to need version `v`
//! encodes its chunks, and every other stream sends the same bytes (reference-counted
//! [`Bytes`]). Only the latest version is kept, so memory stays at one encoded copy.

use std::sync::Arc;

use mesh_core::proto::control::v1 as pb;
use parking_lot::Mutex;
use prost::bytes::Bytes;
use prost::Message;

use super::hub::Hub;
use super::node::chunk;

/// The encoded `NodeUpdate` messages of a full sync.
#[derive(Debug)]
pub struct EncodedFullSync {
    /// Feed version the messages carry.
    pub version: u64,
    /// Most resources per message.
    pub chunk_size: usize,
    /// Encoded messages, in order (the first resets, the last completes).
    pub chunks: Arc<[Bytes]>,
}

/// Caches the latest [`EncodedFullSync`].
#[derive(Debug, Default)]
pub struct FullSyncCache {
    latest: Mutex<Option<Arc<EncodedFullSync>>>,
}

/// One message's wire bytes.
pub fn encode(update: &pb::NodeUpdate) -> Bytes {
    Bytes::from(update.encode_to_vec())
}

impl FullSyncCache {
    /// The full sync at the hub's current version, encoding it if no stream did yet. Streams
    /// asking concurrently wait for the one encoding instead of encoding again.
    pub fn get(&self, hub: &Hub, chunk_size: usize) -> Arc<EncodedFullSync> {
        let mut latest = self.latest.lock();
        if let Some(cached) = latest.as_ref() {
            if cached.version == hub.version() && cached.chunk_size == chunk_size {
                return Arc::clone(cached);
            }
        }
        let delta = hub.delta(None);
        let version = delta.version;
        let chunks: Arc<[Bytes]> = chunk(&hub.feed_id(), delta, chunk_size)
            .map(|update| encode(&update))
            .collect();
        tracing::debug!(version, messages = chunks.len(), "encoded full sync");
        let encoded = Arc::new(EncodedFullSync {
            version,
            chunk_size,
            chunks,
        });
        *latest = Some(Arc::clone(&encoded));
        encoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Authorization, PolicyAction, PolicyScope, Snapshot};

    fn snapshot(policies: usize) -> Arc<Snapshot> {
        let mut snapshot = Snapshot::default();
        for i in 0..policies {
            let policy = Authorization {
                key: format!("ns/p{i}"),
                name: format!("p{i}"),
                namespace: "ns".into(),
                scope: PolicyScope::Namespace,
                action: PolicyAction::Deny,
                rules: Vec::new(),
                has_l7: false,
            };
            snapshot.policies.insert(policy.key.clone(), policy);
        }
        Arc::new(snapshot)
    }

    #[test]
    fn encoded_once_per_version_and_identical_to_per_stream_encoding() {
        let hub = Hub::with_feed_id("f".into(), 100);
        hub.apply(snapshot(5));
        let cache = FullSyncCache::default();
        let first = cache.get(&hub, 2);
        let second = cache.get(&hub, 2);
        assert!(
            Arc::ptr_eq(&first, &second),
            "the second stream reuses the bytes"
        );
        let expected: Vec<Bytes> = chunk("f", hub.delta(None), 2).map(|u| encode(&u)).collect();
        assert_eq!(&first.chunks[..], &expected[..]);
        let decoded = pb::NodeUpdate::decode(first.chunks[0].clone()).expect("decodes");
        assert!(decoded.reset && decoded.upserts.len() == 2);
        hub.apply(snapshot(6));
        let third = cache.get(&hub, 2);
        assert_eq!(
            third.version,
            first.version + 1,
            "a new version is encoded anew"
        );
        assert_eq!(third.chunks.len(), 3);
        let other_size = cache.get(&hub, 100);
        assert_eq!(other_size.chunks.len(), 1);
    }
}
