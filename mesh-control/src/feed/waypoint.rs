//! `WaypointFeed.Subscribe`: each waypoint's routes, policies, services and endpoints.
//!
//! Every message is the waypoint's complete config; its version is a hash of the encoded
//! config, so an unchanged config is never resent and a reconnecting waypoint that already has
//! it (same feed id and version) gets nothing until it changes. The caller's right to read it
//! is checked again on every snapshot: a stream whose caller no longer runs (or is no longer)
//! a pod of the waypoint ends with `PERMISSION_DENIED`. That check also guards the ingress
//! Gateway's private keys (`tls_credentials`), which only its own feed carries.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use mesh_core::authz::PathNormalization;
use mesh_core::drain::DrainWatch;
use mesh_core::proto::control::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::hub::Hub;
use super::ingress;
use super::node::StreamSettings;
use crate::auth::{caller_when_synced, workload, Authenticator, Caller};
use crate::model::{PolicyScope, Snapshot};

fn is_target(kind: &str, namespace: &str, name: &str, t: &crate::model::PolicyTarget) -> bool {
    t.kind == kind && t.namespace == namespace && t.name == name
}

/// The config of waypoint `namespace/name` in `snapshot` (version and feed id unset).
pub fn config_for(snapshot: &Snapshot, namespace: &str, name: &str) -> pb::WaypointConfig {
    let bound = |w: &Option<crate::model::WaypointRef>| {
        w.as_ref()
            .is_some_and(|w| w.name.namespace == namespace && w.name.name == name)
    };
    let ingress_routes = ingress::routes(snapshot, namespace, name);
    let backends = ingress::backend_hosts(&ingress_routes);
    let services: Vec<_> = snapshot
        .services
        .values()
        .filter(|s| bound(&s.waypoint) || backends.contains(s.hostname.as_str()))
        .collect();
    // Hosts whose mesh traffic this waypoint handles.
    let hosts: BTreeSet<&str> = services
        .iter()
        .filter(|s| bound(&s.waypoint))
        .map(|s| s.hostname.as_str())
        .collect();
    let mut uids: BTreeSet<&str> = services
        .iter()
        .flat_map(|s| s.endpoints.iter().map(|e| e.workload_uid.as_str()))
        .collect();
    uids.extend(
        snapshot
            .workloads
            .values()
            .filter(|w| bound(&w.waypoint))
            .map(|w| w.uid.as_str()),
    );
    let targeted = |scope: &PolicyScope| match scope {
        PolicyScope::Targeted(targets) => targets.iter().any(|t| {
            is_target("Gateway", namespace, name, t)
                || services.iter().any(|s| {
                    is_target("Service", &s.namespace, &s.name, t)
                        || is_target("ServiceEntry", &s.namespace, &s.name, t)
                })
        }),
        _ => false,
    };
    pb::WaypointConfig {
        feed_id: String::new(),
        version: 0,
        services: services.iter().map(|s| convert::service(s)).collect(),
        workloads: uids
            .iter()
            .filter_map(|uid| snapshot.workloads.get(*uid))
            .map(convert::workload)
            .collect(),
        routes: snapshot
            .routes
            .values()
            .filter(|r| r.mesh && r.hosts.iter().any(|h| hosts.contains(h.as_str())))
            .chain(ingress_routes.iter().copied())
            .map(convert::route)
            .collect(),
        policies: snapshot
            .policies
            .values()
            .filter(|p| targeted(&p.scope))
            .map(convert::authorization)
            .collect(),
        traffic_policies: snapshot
            .traffic_policies
            .values()
            .filter(|t| hosts.contains(t.host.as_str()) || backends.contains(t.host.as_str()))
            .map(convert::traffic_policy)
            .collect(),
        tls_credentials: ingress::tls_credentials(snapshot, namespace, name),
        path_normalization: path_normalization(snapshot.path_normalization) as i32,
        request_authentications: snapshot
            .request_authns
            .values()
            .filter(|r| targeted(&r.scope))
            .map(convert::request_authentication)
            .collect(),
    }
}

fn path_normalization(mode: PathNormalization) -> pb::PathNormalization {
    match mode {
        PathNormalization::None => pb::PathNormalization::None,
        PathNormalization::Base => pb::PathNormalization::Base,
        PathNormalization::MergeSlashes => pb::PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes => pb::PathNormalization::DecodeAndMergeSlashes,
    }
}

/// The config names every workload behind the waypoint, so a node may read it only if it runs
/// one of the waypoint's pods (an endpoint of the waypoint's Service, or a pod of the Istio
/// Gateway of that name), and a workload caller only if it is such a pod.
fn authorise(
    snapshot: &Snapshot,
    caller: &Caller,
    namespace: &str,
    name: &str,
) -> Result<(), Status> {
    match caller {
        Caller::Node(n) => node_may_read(snapshot, &n.node, namespace, name),
        Caller::Workload(w) => Ok(workload::may_read_waypoint(snapshot, w, namespace, name)?),
    }
}

fn node_may_read(
    snapshot: &Snapshot,
    node: &str,
    namespace: &str,
    name: &str,
) -> Result<(), Status> {
    let hosts_waypoint_pod = snapshot
        .waypoint_pods(namespace, name)
        .chain(snapshot.gateway_pods(namespace, name))
        .any(|w| w.node == node);
    if hosts_waypoint_pod {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "node {node:?} runs no pod of waypoint {namespace}/{name}"
        )))
    }
}

/// A content version: a hash of the encoded config (deterministic: maps are ordered).
pub fn content_version(config: &pb::WaypointConfig) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    config.encode_to_vec().hash(&mut hasher);
    // 0 means "nothing" to clients.
    hasher.finish().max(1)
}

/// The waypoint feed gRPC service.
#[derive(Clone)]
pub struct WaypointFeedService {
    hub: Arc<Hub>,
    auth: Arc<dyn Authenticator>,
    settings: StreamSettings,
    drain: DrainWatch,
}

impl WaypointFeedService {
    /// A service over `hub`; streams end when `drain` starts.
    pub fn new(
        hub: Arc<Hub>,
        auth: Arc<dyn Authenticator>,
        settings: StreamSettings,
        drain: DrainWatch,
    ) -> Self {
        Self {
            hub,
            auth,
            settings,
            drain,
        }
    }
}

type Tx = mpsc::Sender<Result<pb::WaypointConfig, Status>>;

async fn run_stream(
    hub: Arc<Hub>,
    caller: Caller,
    request: pb::WaypointSubscribeRequest,
    settings: StreamSettings,
    tx: Tx,
    mut drain: DrainWatch,
) {
    let mut snapshots = hub.subscribe_snapshots();
    let feed_id = hub.feed_id();
    let mut sent = (request.feed_id == feed_id).then_some(request.resume_version);
    loop {
        let snapshot = Arc::clone(&snapshots.borrow_and_update().snapshot);
        if let Err(denied) = authorise(&snapshot, &caller, &request.namespace, &request.name) {
            tracing::info!(%caller, reason = %denied.message(), "waypoint feed access withdrawn");
            let _ = tokio::time::timeout(settings.send_timeout, tx.send(Err(denied))).await;
            return;
        }
        let mut config = config_for(&snapshot, &request.namespace, &request.name);
        let version = content_version(&config);
        if sent != Some(version) {
            config.version = version;
            config.feed_id.clone_from(&feed_id);
            match tokio::time::timeout(settings.send_timeout, tx.send(Ok(config))).await {
                Ok(Ok(())) => sent = Some(version),
                _ => return,
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            () = drain.signaled() => return,
            () = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl pb::waypoint_feed_server::WaypointFeed for WaypointFeedService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::WaypointConfig, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::WaypointSubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = caller_when_synced(self.auth.as_ref(), &self.hub, request.metadata()).await?;
        let request = request.into_inner();
        if request.namespace.is_empty() || request.name.is_empty() {
            return Err(Status::invalid_argument(
                "waypoint namespace and name are required",
            ));
        }
        authorise(&self.hub.latest(), &who, &request.namespace, &request.name)?;
        tracing::info!(caller = %who, waypoint = %format!("{}/{}", request.namespace, request.name), "waypoint subscribed");
        let (tx, rx) = mpsc::channel(self.settings.buffer.max(1));
        let task = run_stream(
            Arc::clone(&self.hub),
            who,
            request,
            self.settings.clone(),
            tx,
            self.drain.clone(),
        );
        tokio::spawn(task);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
