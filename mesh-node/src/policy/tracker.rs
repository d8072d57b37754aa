//! The authorizer: current policies plus the live connections the node carries.
//!
//! Each admitted inbound connection registers its [`ConnectionInfo`] and gets a
//! [`ConnectionGuard`]; outbound connections register their source workload. When policies are
//! replaced, every live inbound connection is re-evaluated; when the mesh changes, connections
//! whose local end (the destination pod inbound, the source pod outbound) left are found. Either
//! way the guard resolves with the [`Revocation`] and the proxy closes the connection.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::sync::watch;

use super::{ConnectionInfo, Decision, Policies};

/// Why a live connection was closed by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A policy update denies it.
    Policy,
    /// Its destination, a local pod, is no longer in the mesh.
    DestinationGone {
        /// The workload that left.
        workload: String,
    },
    /// Its source, a local pod, is no longer in the mesh.
    SourceGone {
        /// The workload that left.
        workload: String,
    },
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Policy => f.write_str("revoked by policy"),
            Self::DestinationGone { workload } => {
                write!(f, "closed: destination workload {workload} left the mesh")
            }
            Self::SourceGone { workload } => {
                write!(f, "closed: source workload {workload} left the mesh")
            }
        }
    }
}

/// What a live connection is checked against.
#[derive(Debug)]
enum Tracked {
    /// Inbound to a local pod: policy and the destination's presence.
    Inbound(ConnectionInfo),
    /// Outbound from a local pod: the source's presence.
    Outbound { source_ip: IpAddr, workload: String },
}

type Entry = (Tracked, watch::Sender<Option<Revocation>>);

#[derive(Debug, Default)]
struct Live {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Entry>>,
}

/// Evaluates connections and re-checks them on policy or mesh change. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authorizer {
    policies: Arc<arc_swap::ArcSwap<Policies>>,
    live: Arc<Live>,
}

/// Held for the life of a tracked connection; [`ConnectionGuard::revoked`] resolves when the
/// node closes it.
#[derive(Debug)]
pub struct ConnectionGuard {
    id: u64,
    live: Arc<Live>,
    revoked: watch::Receiver<Option<Revocation>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain map; a panicking holder cannot leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Authorizer {
    /// An authorizer over `policies`.
    pub fn new(policies: Policies) -> Self {
        Self {
            policies: Arc::new(arc_swap::ArcSwap::from_pointee(policies)),
            live: Arc::default(),
        }
    }

    /// Evaluates without registering.
    pub fn evaluate(&self, conn: &ConnectionInfo) -> Decision {
        self.policies.load().evaluate(conn)
    }

    /// Evaluates an inbound connection and, when allowed, registers it for re-checks.
    pub fn admit(&self, conn: ConnectionInfo) -> Result<ConnectionGuard, Decision> {
        let mut live = lock(&self.live.conns);
        // Evaluate under the lock so a concurrent policy swap cannot miss this connection.
        let decision = self.evaluate(&conn);
        if !decision.is_allowed() {
            return Err(decision);
        }
        Ok(self.register(&mut live, Tracked::Inbound(conn)))
    }

    /// Registers an outbound connection of the local workload `workload` at `source_ip`.
    pub fn track_outbound(&self, source_ip: IpAddr, workload: String) -> ConnectionGuard {
        let mut live = lock(&self.live.conns);
        self.register(
            &mut live,
            Tracked::Outbound {
                source_ip,
                workload,
            },
        )
    }

    fn register(&self, live: &mut HashMap<u64, Entry>, tracked: Tracked) -> ConnectionGuard {
        let id = self.live.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        live.insert(id, (tracked, tx));
        ConnectionGuard {
            id,
            live: self.live.clone(),
            revoked: rx,
        }
    }

    /// Installs new policies and revokes live inbound connections they deny. Returns how many.
    pub fn update(&self, policies: Policies) -> usize {
        let live = lock(&self.live.conns);
        self.policies.store(Arc::new(policies));
        let current = self.policies.load();
        let mut revoked = 0;
        for (tracked, tx) in live.values() {
            let Tracked::Inbound(conn) = tracked else {
                continue;
            };
            let decision = current.evaluate(conn);
            if !decision.is_allowed() && revoke(tx, Revocation::Policy) {
                tracing::info!(dest = %conn.dest_workload, ?decision, "policy change closes connection");
                revoked += 1;
            }
        }
        revoked
    }

    /// Closes connections whose local end left the mesh: `is_local(ip, name)` says whether the
    /// local workload `name` still has `ip`. Returns how many were closed.
    pub fn close_departed(&self, is_local: impl Fn(IpAddr, &str) -> bool) -> usize {
        let live = lock(&self.live.conns);
        let mut closed = 0;
        for (tracked, tx) in live.values() {
            let revocation = match tracked {
                Tracked::Inbound(conn) if !is_local(conn.dest_ip, &conn.dest_workload) => {
                    Revocation::DestinationGone {
                        workload: conn.dest_workload.clone(),
                    }
                }
                Tracked::Outbound {
                    source_ip,
                    workload,
                } if !is_local(*source_ip, workload) => Revocation::SourceGone {
                    workload: workload.clone(),
                },
                _ => continue,
            };
            tracing::info!(reason = %revocation, "mesh change closes connection");
            closed += usize::from(revoke(tx, revocation));
        }
        closed
    }

    /// Live tracked connections.
    pub fn live_connections(&self) -> usize {
        lock(&self.live.conns).len()
    }

    /// Number of policies in force.
    pub fn policy_count(&self) -> usize {
        self.policies.load().len()
    }
}

/// Revokes unless already revoked; whether this call did.
fn revoke(tx: &watch::Sender<Option<Revocation>>, revocation: Revocation) -> bool {
    tx.send_if_modified(|current| {
        if current.is_some() {
            return false;
        }
        *current = Some(revocation);
        true
    })
}

impl ConnectionGuard {
    /// Resolves with the reason when the node closes this connection (never, otherwise).
    pub async fn revoked(&mut self) -> Revocation {
        let revocation = match self.revoked.wait_for(Option::is_some).await {
            Ok(revocation) => revocation.clone(),
            Err(_) => None,
        };
        match revocation {
            Some(revocation) => revocation,
            None => std::future::pending().await,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        lock(&self.live.conns).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_core::proto::control::v1 as pb;

    use super::*;

    /// Policies written as the feed's messages (YAML in the proto3 JSON mapping).
    fn compile(yaml: &str) -> Policies {
        let wire: Vec<pb::Authorization> = serde_yaml::from_str(yaml).unwrap();
        let mut warnings = Vec::new();
        let policies = Policies::from_feed(&wire, |_| Default::default(), &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        policies
    }

    fn conn(ns: &str) -> ConnectionInfo {
        ConnectionInfo {
            source_identity: Some(
                format!("spiffe://cluster.local/ns/{ns}/sa/x")
                    .parse()
                    .unwrap(),
            ),
            source_ip: "10.0.0.1".parse().unwrap(),
            dest_namespace: "data".into(),
            dest_ip: "10.0.0.9".parse().unwrap(),
            dest_workload: "db-0".into(),
            dest_port: 5432,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn policy_update_revokes_only_newly_denied_connections() {
        let authz = Authorizer::new(compile("[]"));
        let mut web = authz.admit(conn("web")).unwrap();
        let mut batch = authz.admit(conn("batch")).unwrap();
        assert_eq!(authz.live_connections(), 2);
        let deny_batch = "[{key: data/d, namespace: data, scope: POLICY_SCOPE_NAMESPACE,
            action: POLICY_ACTION_DENY, rules: [{from: [{namespaces: [batch]}]}]}]";
        assert_eq!(authz.update(compile(deny_batch)), 1);
        let reason = tokio::time::timeout(Duration::from_secs(1), batch.revoked())
            .await
            .expect("batch connection not revoked");
        assert_eq!(reason, Revocation::Policy);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), web.revoked())
                .await
                .is_err(),
            "web connection wrongly revoked"
        );
        assert!(authz.admit(conn("batch")).is_err());
        drop(batch);
        assert_eq!(authz.live_connections(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn departed_local_ends_close_their_connections_once() {
        let authz = Authorizer::new(compile("[]"));
        let mut inbound = authz.admit(conn("web")).unwrap();
        let mut outbound = authz.track_outbound("10.0.0.1".parse().unwrap(), "web-0".into());
        let mut staying = authz.track_outbound("10.0.0.2".parse().unwrap(), "api-0".into());
        let present = |ip: IpAddr, name: &str| ip.to_string() == "10.0.0.2" && name == "api-0";
        assert_eq!(authz.close_departed(present), 2);
        assert_eq!(authz.close_departed(present), 0, "already closed");
        let wait = Duration::from_secs(1);
        assert_eq!(
            tokio::time::timeout(wait, inbound.revoked()).await.unwrap(),
            Revocation::DestinationGone {
                workload: "db-0".into()
            }
        );
        let reason = tokio::time::timeout(wait, outbound.revoked())
            .await
            .unwrap();
        assert_eq!(
            reason.to_string(),
            "closed: source workload web-0 left the mesh"
        );
        assert!(tokio::time::timeout(wait, staying.revoked()).await.is_err());
    }
}
