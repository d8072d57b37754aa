//! Pods into [`Workload`]s: addresses, identity, node, enrolment, waypoint, policies, mTLS.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use super::policy::{effective_mtls, selects, PeerAuthn, SelectorPolicy};
use super::{Ctx, Diagnostics, Kind, ObjectKey, Resource};
use crate::enrollment::{is_enrolled, same_node_plaintext, waypoint_for, WaypointName};
use crate::model::{WaypointRef, Workload};

/// What workload translation needs from earlier steps.
pub struct Inputs<'a> {
    /// Selector-scoped authorization policies.
    pub selectors: &'a [SelectorPolicy],
    /// PeerAuthentications.
    pub peers: &'a [PeerAuthn],
    /// Waypoint name -> address.
    pub waypoints: &'a BTreeMap<WaypointName, IpAddr>,
}

/// Resolves a waypoint name to a reference with its address (if its Service exists).
pub fn resolve_waypoint(
    waypoints: &BTreeMap<WaypointName, IpAddr>,
    name: Option<WaypointName>,
) -> Option<WaypointRef> {
    name.map(|name| WaypointRef {
        address: waypoints.get(&name).copied(),
        name,
    })
}

/// The SPIFFE identity of a service account.
pub fn spiffe_identity(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

fn pod_ips(pod: &Pod) -> Result<Vec<IpAddr>, String> {
    let Some(status) = &pod.status else {
        return Ok(Vec::new());
    };
    let mut texts: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .collect();
    if texts.is_empty() {
        texts.extend(status.pod_ip.as_deref());
    }
    texts
        .iter()
        .map(|text| text.parse().map_err(|_| format!("invalid pod ip {text:?}")))
        .collect()
}

/// The pod's controller as Istio's telemetry names it: (name, lowercase kind). A ReplicaSet
/// made by a Deployment (its name is `<deployment>-<pod-template-hash>`) names the Deployment; a
/// Job made by a CronJob (`<cronjob>-<scheduled minute>`) names the CronJob.
fn controller(pod: &Pod, pod_name: &str) -> (String, String) {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    let Some(owner) = owner else {
        return (pod_name.to_owned(), "pod".to_owned());
    };
    let kind = owner.kind.to_ascii_lowercase();
    let name = owner.name.as_str();
    match kind.as_str() {
        "replicaset" => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get("pod-template-hash"));
            match hash.and_then(|hash| name.strip_suffix(hash.as_str())?.strip_suffix('-')) {
                Some(deployment) if !deployment.is_empty() => {
                    (deployment.to_owned(), "deployment".to_owned())
                }
                _ => (name.to_owned(), kind),
            }
        }
        "job" => match cronjob_of(name) {
            Some(cronjob) => (cronjob.to_owned(), "cronjob".to_owned()),
            None => (name.to_owned(), kind),
        },
        _ => (name.to_owned(), kind),
    }
}

/// The CronJob of a Job it scheduled: the name less a `-<8 to 10 digits>` suffix.
fn cronjob_of(job: &str) -> Option<&str> {
    let (cronjob, stamp) = job.rsplit_once('-')?;
    let stamp_ok = (8..=10).contains(&stamp.len()) && stamp.bytes().all(|b| b.is_ascii_digit());
    (stamp_ok && !cronjob.is_empty()).then_some(cronjob)
}

fn is_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

fn translate_pod(
    ctx: &Ctx<'_>,
    inputs: &Inputs<'_>,
    key: &ObjectKey,
    pod: &Pod,
    diags: &mut Diagnostics<'_>,
) -> Option<Workload> {
    if is_finished(pod) {
        return None;
    }
    let spec = pod.spec.as_ref();
    let node = spec.and_then(|s| s.node_name.clone()).unwrap_or_default();
    let ips = match pod_ips(pod) {
        // Scheduled, its sandbox not up yet: the node needs it before the pod has an address,
        // to capture it from its first connection (the CNI plugin hands the node the address).
        Ok(ips) if ips.is_empty() && node.is_empty() => return None,
        Ok(ips) => ips,
        Err(message) => {
            diags.push(key, "status.podIPs", &message);
            return None;
        }
    };
    let namespace = key.namespace.as_str();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let ns_labels = ctx.namespace_labels(namespace);
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let waypoint = waypoint_for(namespace, &[&labels, ns_labels]);
    let root = ctx.config.root_namespace.as_str();
    let policies = inputs
        .selectors
        .iter()
        .filter(|p| {
            (p.namespace == namespace || p.namespace == root) && selects(&p.match_labels, &labels)
        })
        .map(|p| p.key.clone())
        .collect();
    let (mtls, port_mtls) = effective_mtls(inputs.peers, root, namespace, &labels);
    let (workload_name, workload_kind) = controller(pod, &key.name);
    Some(Workload {
        uid: format!("{namespace}/{}", key.name),
        name: key.name.clone(),
        workload_name,
        workload_kind,
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: namespace.to_string(),
        ips,
        node,
        identity: spiffe_identity(&ctx.config.trust_domain, namespace, &service_account),
        service_account,
        // Host-network pods share the node's network namespace and cannot be captured.
        enrolled: !host_network && is_enrolled(ns_labels, &labels),
        same_node_plaintext: same_node_plaintext(ctx.config.always_encrypt_same_node, ns_labels),
        waypoint: resolve_waypoint(inputs.waypoints, waypoint),
        labels,
        policies,
        mtls,
        port_mtls,
    })
}

/// Translates every pod that is scheduled or has an address, and is not finished.
pub fn translate(
    ctx: &Ctx<'_>,
    inputs: &Inputs<'_>,
    diags: &mut Diagnostics<'_>,
) -> BTreeMap<String, Workload> {
    let mut out = BTreeMap::new();
    for (key, stored) in ctx.of_kind(Kind::Pod) {
        let Resource::Pod(pod) = &stored.resource else {
            continue;
        };
        diags.set_origin(&stored.origin);
        if let Some(workload) = translate_pod(ctx, inputs, key, pod, diags) {
            out.insert(workload.uid.clone(), workload);
        }
    }
    out
}

/// Container port numbers by port name, for resolving named target ports.
pub fn named_ports(pod: &Pod) -> BTreeMap<String, u16> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let port = u16::try_from(p.container_port).ok()?;
            Some((name, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(&format!("metadata:\n  name: web-1\n{yaml}")).expect("pod yaml")
    }

    #[test]
    fn workloads_are_named_after_their_controller() {
        let owned = |kind: &str, name: &str, labels: &str| {
            pod(&format!(
                "  labels: {{{labels}}}\n  ownerReferences:\n  - {{apiVersion: apps/v1, kind: {kind}, name: {name}, uid: u, controller: true}}\n"
            ))
        };
        let cases = [
            (
                owned("ReplicaSet", "web-7d9f8c", "pod-template-hash: 7d9f8c"),
                ("web", "deployment"),
            ),
            // A ReplicaSet made by hand: no hash suffix to strip.
            (
                owned("ReplicaSet", "web-rs", "pod-template-hash: 7d9f8c"),
                ("web-rs", "replicaset"),
            ),
            (owned("ReplicaSet", "web-rs", ""), ("web-rs", "replicaset")),
            (owned("StatefulSet", "db", ""), ("db", "statefulset")),
            (owned("DaemonSet", "agent", ""), ("agent", "daemonset")),
            (owned("Job", "backup-28911540", ""), ("backup", "cronjob")),
            (owned("Job", "migrate", ""), ("migrate", "job")),
            (owned("Job", "migrate-2024", ""), ("migrate-2024", "job")),
            (pod(""), ("web-1", "pod")),
            // An owner that is not the controller does not name the workload.
            (
                pod("  ownerReferences:\n  - {apiVersion: v1, kind: Node, name: n1, uid: u}\n"),
                ("web-1", "pod"),
            ),
        ];
        for (pod, (name, kind)) in cases {
            let got = controller(&pod, "web-1");
            assert_eq!(
                got,
                (name.to_owned(), kind.to_owned()),
                "{:?}",
                pod.metadata
            );
        }
    }
}
