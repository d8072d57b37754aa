//! What a workload caller (a pod presenting its own service-account token) may do.
//!
//! Only waypoint and ingress gateway pods call mesh-control themselves. The token's pod
//! binding is checked against mesh-control's own view (the latest snapshot): the pod must exist,
//! run the token's service account, carry the token's pod uid when the token names one, and be
//! a pod of a waypoint or of an Istio Gateway. Such a pod may then obtain a certificate for its
//! own service account's identity only, and read the waypoint feed only for the waypoint (or
//! Gateway) it serves. Everything else is refused with the reason; refusals fail closed.

use tonic::Status;

use super::WorkloadIdentity;
use crate::model::{Snapshot, Workload};

/// Why a workload caller is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadDenied {
    /// The token's pod is not (yet) known.
    #[error("pod {pod} is not known to mesh-control (not scheduled or no ip yet?); retry shortly")]
    NoSuchPod {
        /// `namespace/name` of the pod.
        pod: String,
    },
    /// The pod runs another service account than the token's.
    #[error("pod {pod} runs service account {actual:?}, but the token is of {token:?}")]
    ServiceAccount {
        /// `namespace/name` of the pod.
        pod: String,
        /// The pod's service account.
        actual: String,
        /// The token's service account.
        token: String,
    },
    /// The pod's uid differs from the token's (the pod was deleted and recreated).
    #[error("pod {pod} has uid {actual:?}, but the token is bound to uid {token:?} (was the pod recreated?)")]
    Uid {
        /// `namespace/name` of the pod.
        pod: String,
        /// The pod's uid.
        actual: String,
        /// The token's uid.
        token: String,
    },
    /// The pod is neither a waypoint nor an ingress gateway pod.
    #[error("pod {pod} is neither a pod of a waypoint in use nor of an ingress gateway; only those may call mesh-control with their own token")]
    NotWaypoint {
        /// `namespace/name` of the pod.
        pod: String,
    },
    /// A certificate for an identity other than the pod's own.
    #[error("pod {pod} may only obtain its own identity {own}, not {requested}")]
    ForeignIdentity {
        /// `namespace/name` of the pod.
        pod: String,
        /// The pod's identity.
        own: String,
        /// The requested identity.
        requested: String,
    },
    /// The feed of a waypoint the pod does not serve.
    #[error("pod {pod} is not a pod of waypoint or gateway {waypoint}")]
    OtherWaypoint {
        /// `namespace/name` of the pod.
        pod: String,
        /// `namespace/name` of the waypoint.
        waypoint: String,
    },
}

impl From<WorkloadDenied> for Status {
    fn from(denied: WorkloadDenied) -> Self {
        Status::permission_denied(denied.to_string())
    }
}

/// The caller's pod, once it is known to match the token and to be a waypoint or gateway pod.
pub fn verified_pod<'a>(
    snapshot: &'a Snapshot,
    who: &WorkloadIdentity,
) -> Result<&'a Workload, WorkloadDenied> {
    let pod = format!("{}/{}", who.namespace, who.pod_name);
    let Some(workload) = snapshot.workloads.get(&pod) else {
        return Err(WorkloadDenied::NoSuchPod { pod });
    };
    if workload.service_account != who.service_account {
        return Err(WorkloadDenied::ServiceAccount {
            pod,
            actual: workload.service_account.clone(),
            token: who.service_account.clone(),
        });
    }
    if let Some(uid) = who.pod_uid.as_ref().filter(|u| **u != workload.pod_uid) {
        return Err(WorkloadDenied::Uid {
            pod,
            actual: workload.pod_uid.clone(),
            token: uid.clone(),
        });
    }
    if !(snapshot.is_waypoint_pod(&workload.uid) || snapshot.is_gateway_pod(&workload.uid)) {
        return Err(WorkloadDenied::NotWaypoint { pod });
    }
    Ok(workload)
}

/// Whether the caller may obtain a certificate for `identity` (a SPIFFE ID in the right trust
/// domain, checked by the caller): only its own.
pub fn may_certify(
    snapshot: &Snapshot,
    who: &WorkloadIdentity,
    identity: &str,
) -> Result<(), WorkloadDenied> {
    let pod = verified_pod(snapshot, who)?;
    if pod.identity == identity {
        Ok(())
    } else {
        Err(WorkloadDenied::ForeignIdentity {
            pod: pod.uid.clone(),
            own: pod.identity.clone(),
            requested: identity.to_string(),
        })
    }
}

/// Whether the caller may read the feed of waypoint `namespace/name`: only if it is one of that
/// waypoint Service's endpoints, or a pod of the Gateway of that name.
pub fn may_read_waypoint(
    snapshot: &Snapshot,
    who: &WorkloadIdentity,
    namespace: &str,
    name: &str,
) -> Result<(), WorkloadDenied> {
    let pod = verified_pod(snapshot, who)?;
    let serves = snapshot
        .waypoint_pods(namespace, name)
        .chain(snapshot.gateway_pods(namespace, name))
        .any(|w| w.uid == pod.uid);
    if serves {
        Ok(())
    } else {
        Err(WorkloadDenied::OtherWaypoint {
            pod: pod.uid.clone(),
            waypoint: format!("{namespace}/{name}"),
        })
    }
}

#[cfg(test)]
mod tests;
