//! The authorizer: current policies plus the live connections they admitted.
//!
//! Each admitted connection registers its [`ConnectionInfo`] and gets a [`ConnectionGuard`];
//! when policies are replaced, every live connection is re-evaluated and those no longer allowed
//! are told to close through their guard.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::sync::watch;

use super::{ConnectionInfo, Decision, Policies};

#[derive(Debug, Default)]
struct Live {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, (ConnectionInfo, watch::Sender<bool>)>>,
}

/// Evaluates connections and re-checks them on policy change. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authorizer {
    policies: Arc<arc_swap::ArcSwap<Policies>>,
    live: Arc<Live>,
}

/// Held for the life of an admitted connection; [`ConnectionGuard::revoked`] resolves when a
/// policy change denies it.
#[derive(Debug)]
pub struct ConnectionGuard {
    id: u64,
    live: Arc<Live>,
    revoked: watch::Receiver<bool>,
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

    /// Evaluates and, when allowed, registers the connection for re-checks.
    pub fn admit(&self, conn: ConnectionInfo) -> Result<ConnectionGuard, Decision> {
        let mut live = lock(&self.live.conns);
        // Evaluate under the lock so a concurrent policy swap cannot miss this connection.
        let decision = self.evaluate(&conn);
        if !decision.is_allowed() {
            return Err(decision);
        }
        let id = self.live.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        live.insert(id, (conn, tx));
        Ok(ConnectionGuard {
            id,
            live: self.live.clone(),
            revoked: rx,
        })
    }

    /// Installs new policies and revokes live connections they deny. Returns how many.
    pub fn update(&self, policies: Policies) -> usize {
        let live = lock(&self.live.conns);
        self.policies.store(Arc::new(policies));
        let current = self.policies.load();
        let mut revoked = 0;
        for (conn, tx) in live.values() {
            let decision = current.evaluate(conn);
            if !decision.is_allowed() && !*tx.borrow() {
                tracing::info!(dest = %conn.dest_workload, ?decision, "policy change closes connection");
                tx.send_replace(true);
                revoked += 1;
            }
        }
        revoked
    }

    /// Live admitted connections.
    pub fn live_connections(&self) -> usize {
        lock(&self.live.conns).len()
    }

    /// Number of policies in force.
    pub fn policy_count(&self) -> usize {
        self.policies.load().len()
    }
}

impl ConnectionGuard {
    /// Resolves when a policy change revokes this connection (never, otherwise).
    pub async fn revoked(&mut self) {
        if self.revoked.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
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

    use super::*;
    use crate::config::PolicyConfig;

    fn compile(yaml: &str) -> Policies {
        let configs: Vec<PolicyConfig> = serde_yaml::from_str(yaml).unwrap();
        Policies::compile("istio-system", &configs).unwrap()
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
            dest_labels: Default::default(),
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
        let deny_batch =
            "[{name: d, namespace: data, action: DENY, rules: [{from: [{namespaces: [batch]}]}]}]";
        assert_eq!(authz.update(compile(deny_batch)), 1);
        tokio::time::timeout(Duration::from_secs(1), batch.revoked())
            .await
            .expect("batch connection not revoked");
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
}
