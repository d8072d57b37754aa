//! Services and ServiceEntries into [`Service`]s with VIPs, ports and endpoints.
//!
//! Endpoints come from the service's EndpointSlices when any exist (what a cluster provides),
//! otherwise from its pod selector (what a local-directory user writes).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::policy::selects;
use super::workloads::{named_ports, resolve_waypoint, spiffe_identity};
use super::{Ctx, Diagnostics, Kind, ObjectKey, Resource};
use crate::crd::networking::ServiceEntry;
use crate::enrollment::{waypoint_for, WaypointName};
use crate::model::{Endpoint, Service, ServicePort, Snapshot, Workload};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn cluster_ips(svc: &KubeService) -> Vec<IpAddr> {
    let spec = svc.spec.as_ref();
    let mut texts: Vec<&String> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .map(|ips| ips.iter().collect())
        .unwrap_or_default();
    if texts.is_empty() {
        texts.extend(spec.and_then(|s| s.cluster_ip.as_ref()));
    }
    // "None" (headless) and bad values parse to nothing.
    texts.iter().filter_map(|t| t.parse().ok()).collect()
}

/// Waypoint name -> the cluster IP of the Service that fronts it.
pub fn waypoint_addresses(ctx: &Ctx<'_>) -> BTreeMap<WaypointName, IpAddr> {
    ctx.of_kind(Kind::Service)
        .filter_map(|(key, stored)| match &stored.resource {
            Resource::Service(svc) => cluster_ips(svc).first().map(|ip| {
                let name = WaypointName {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                };
                (name, *ip)
            }),
            _ => None,
        })
        .collect()
}

fn protocol_of(name: Option<&str>, app_protocol: Option<&str>) -> String {
    if let Some(app) = app_protocol {
        return app.to_ascii_lowercase();
    }
    let name = name.unwrap_or("");
    let prefix = name.split('-').next().unwrap_or("");
    match prefix {
        "http" | "http2" | "grpc" | "https" | "tls" | "tcp" => prefix.to_string(),
        _ => "tcp".to_string(),
    }
}

/// Service port number -> (target number or name), plus the model ports.
type PortSpec = Vec<(ServicePort, Option<String>, Option<String>)>;

fn service_ports(key: &ObjectKey, svc: &KubeService, diags: &mut Diagnostics<'_>) -> PortSpec {
    let ports = svc.spec.iter().flat_map(|s| s.ports.iter().flatten());
    let mut out = Vec::new();
    for (i, p) in ports.enumerate() {
        let Ok(port) = u16::try_from(p.port) else {
            diags.push(
                key,
                &format!("spec.ports[{i}].port"),
                &format!("invalid port {}", p.port),
            );
            continue;
        };
        let (target_port, target_name) = match &p.target_port {
            None => (port, None),
            Some(IntOrString::Int(n)) => (u16::try_from(*n).unwrap_or(0), None),
            Some(IntOrString::String(name)) => (0, Some(name.clone())),
        };
        let model = ServicePort {
            port,
            target_port,
            protocol: protocol_of(p.name.as_deref(), p.app_protocol.as_deref()),
        };
        out.push((model, p.name.clone(), target_name));
    }
    out
}

fn slice_endpoints(slices: &[&EndpointSlice], ports: &PortSpec) -> Vec<Endpoint> {
    let mut out = BTreeMap::new();
    for slice in slices {
        let slice_ports: BTreeMap<Option<&str>, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.as_deref(), u16::try_from(p.port?).ok()?)))
            .collect();
        let mapping: BTreeMap<u16, u16> = ports
            .iter()
            .filter_map(|(sp, name, _)| Some((sp.port, *slice_ports.get(&name.as_deref())?)))
            .collect();
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(target) = endpoint.target_ref.as_ref() else {
                continue;
            };
            if target.kind.as_deref() != Some("Pod") {
                continue;
            }
            let ns = target
                .namespace
                .clone()
                .or_else(|| slice.metadata.namespace.clone());
            let uid = format!(
                "{}/{}",
                ns.unwrap_or_default(),
                target.name.clone().unwrap_or_default()
            );
            out.insert(
                uid.clone(),
                Endpoint {
                    workload_uid: uid,
                    ports: mapping.clone(),
                },
            );
        }
    }
    out.into_values().collect()
}

fn selector_endpoints(
    ctx: &Ctx<'_>,
    namespace: &str,
    selector: &BTreeMap<String, String>,
    ports: &PortSpec,
    workloads: &BTreeMap<String, Workload>,
) -> Vec<Endpoint> {
    if selector.is_empty() {
        return Vec::new();
    }
    // Workload uids start with `<namespace>/`: scan only this namespace's range.
    let prefix = format!("{namespace}/");
    let selected = workloads
        .range(prefix.clone()..)
        .take_while(|(uid, _)| uid.starts_with(&prefix))
        .map(|(_, w)| w)
        .filter(|w| w.namespace == namespace && !w.ips.is_empty() && selects(selector, &w.labels));
    selected
        .map(|w| {
            let named = match ctx.get(Kind::Pod, namespace, &w.name).map(|s| &s.resource) {
                Some(Resource::Pod(pod)) => named_ports(pod),
                _ => BTreeMap::new(),
            };
            let mapping = ports
                .iter()
                .filter_map(|(sp, _, target_name)| match target_name {
                    Some(name) => named.get(name).map(|p| (sp.port, *p)),
                    None => Some((sp.port, sp.target_port)),
                })
                .collect();
            Endpoint {
                workload_uid: w.uid.clone(),
                ports: mapping,
            }
        })
        .collect()
}

fn slices_by_service<'a>(ctx: &Ctx<'a>) -> BTreeMap<(String, String), Vec<&'a EndpointSlice>> {
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for (key, stored) in ctx.of_kind(Kind::EndpointSlice) {
        let Resource::EndpointSlice(slice) = &stored.resource else {
            continue;
        };
        let labels = slice.metadata.labels.as_ref();
        if let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            out.entry((key.namespace.clone(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    out
}

fn translate_kube_services(
    ctx: &Ctx<'_>,
    waypoints: &BTreeMap<WaypointName, IpAddr>,
    snapshot: &mut Snapshot,
    diags: &mut Diagnostics<'_>,
) {
    let slices = slices_by_service(ctx);
    for (key, stored) in ctx.of_kind(Kind::Service) {
        let Resource::Service(svc) = &stored.resource else {
            continue;
        };
        diags.set_origin(&stored.origin);
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let ports = service_ports(key, svc, diags);
        let slice_key = (key.namespace.clone(), key.name.clone());
        let endpoints = match slices.get(&slice_key) {
            Some(slices) => slice_endpoints(slices, &ports),
            None => {
                let selector = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
                selector_endpoints(ctx, &key.namespace, &selector, &ports, &snapshot.workloads)
            }
        };
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        let ns_labels = ctx.namespace_labels(&key.namespace);
        let waypoint = waypoint_for(&key.namespace, &[&labels, ns_labels]);
        let hostname = ctx.fqdn(&key.name, &key.namespace);
        let service = Service {
            key: format!("{}/{hostname}", key.namespace),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            hostname,
            vips: cluster_ips(svc),
            ports: ports.into_iter().map(|p| p.0).collect(),
            endpoints,
            waypoint: resolve_waypoint(waypoints, waypoint),
            node_local: spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local"),
        };
        snapshot.services.insert(service.key.clone(), service);
    }
}

fn entry_ports(
    key: &ObjectKey,
    se: &ServiceEntry,
    diags: &mut Diagnostics<'_>,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for (i, p) in se.spec.ports.iter().enumerate() {
        let port = u16::try_from(p.number).ok().filter(|n| *n > 0);
        let target = u16::try_from(p.target_port.unwrap_or(p.number))
            .ok()
            .filter(|n| *n > 0);
        let (Some(port), Some(target_port)) = (port, target) else {
            diags.push(
                key,
                &format!("spec.ports[{i}]"),
                &format!("invalid port {} (target {:?})", p.number, p.target_port),
            );
            continue;
        };
        let protocol = p.protocol.as_deref().unwrap_or("tcp").to_ascii_lowercase();
        out.push(ServicePort {
            port,
            target_port,
            protocol,
        });
    }
    out
}

fn entry_workloads(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    se: &ServiceEntry,
    diags: &mut Diagnostics<'_>,
) -> Vec<Workload> {
    let mut out = Vec::new();
    for (i, ep) in se.spec.endpoints.iter().enumerate() {
        let Ok(ip) = ep.address.parse::<IpAddr>() else {
            let msg = format!(
                "address {:?} is not an ip; dns endpoints are not supported yet",
                ep.address
            );
            diags.push(key, &format!("spec.endpoints[{i}].address"), &msg);
            continue;
        };
        let sa = ep
            .service_account
            .clone()
            .unwrap_or_else(|| "default".to_string());
        out.push(Workload {
            uid: format!("{}/ServiceEntry/{}/{ip}", key.namespace, key.name),
            name: format!("{}-{i}", key.name),
            workload_name: key.name.clone(),
            workload_kind: "serviceentry".into(),
            pod_uid: String::new(),
            namespace: key.namespace.clone(),
            ips: vec![ip],
            node: String::new(),
            identity: spiffe_identity(&ctx.config.trust_domain, &key.namespace, &sa),
            service_account: sa,
            enrolled: false,
            // Not on any node of the mesh.
            same_node_plaintext: false,
            waypoint: None,
            labels: ep.labels.clone(),
            policies: Vec::new(),
            mtls: Default::default(),
            port_mtls: BTreeMap::new(),
        });
    }
    out
}

/// Who holds each address so far: `<Kind> <namespace>/<name>`.
type Claims = BTreeMap<IpAddr, String>;

fn translate_entry(
    ctx: &Ctx<'_>,
    waypoints: &BTreeMap<WaypointName, IpAddr>,
    key: &ObjectKey,
    se: &ServiceEntry,
    snapshot: &mut Snapshot,
    claims: &mut Claims,
    diags: &mut Diagnostics<'_>,
) {
    let mut vips = Vec::new();
    let owner = format!("ServiceEntry {}/{}", key.namespace, key.name);
    for (i, address) in se.spec.addresses.iter().enumerate() {
        match address.parse::<IpAddr>() {
            Ok(ip) => match claims.get(&ip) {
                Some(holder) if *holder != owner => diags.push(
                    key,
                    &format!("spec.addresses[{i}]"),
                    &format!("{ip} is already the address of {holder}; this address is left out"),
                ),
                _ => {
                    claims.insert(ip, owner.clone());
                    vips.push(ip);
                }
            },
            Err(_) => diags.push(
                key,
                &format!("spec.addresses[{i}]"),
                &format!("{address:?} is not an ip address (cidr addresses are not supported yet)"),
            ),
        }
    }
    if se.spec.hosts.is_empty() {
        diags.push(key, "spec.hosts", "at least one host is required");
        return;
    }
    let ports = entry_ports(key, se, diags);
    let static_workloads = entry_workloads(ctx, key, se, diags);
    let mut endpoints: Vec<Endpoint> = static_workloads
        .iter()
        .map(|w| Endpoint {
            workload_uid: w.uid.clone(),
            ports: ports.iter().map(|p| (p.port, p.target_port)).collect(),
        })
        .collect();
    if let Some(selector) = &se.spec.workload_selector {
        let port_spec: PortSpec = ports.iter().map(|p| (p.clone(), None, None)).collect();
        endpoints.extend(selector_endpoints(
            ctx,
            &key.namespace,
            &selector.match_labels,
            &port_spec,
            &snapshot.workloads,
        ));
    }
    for w in static_workloads {
        snapshot.workloads.insert(w.uid.clone(), w);
    }
    let labels = se.metadata.labels.clone().unwrap_or_default();
    let waypoint = waypoint_for(
        &key.namespace,
        &[&labels, ctx.namespace_labels(&key.namespace)],
    );
    for host in &se.spec.hosts {
        let service = Service {
            key: format!("{}/{host}", key.namespace),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            hostname: host.clone(),
            vips: vips.clone(),
            ports: ports.clone(),
            endpoints: endpoints.clone(),
            waypoint: resolve_waypoint(waypoints, waypoint.clone()),
            node_local: false,
        };
        snapshot.services.insert(service.key.clone(), service);
    }
}

/// Translates Services (with their endpoints) and ServiceEntries. Needs the workloads.
pub fn translate(
    ctx: &Ctx<'_>,
    waypoints: &BTreeMap<WaypointName, IpAddr>,
    snapshot: &mut Snapshot,
    diags: &mut Diagnostics<'_>,
) {
    translate_kube_services(ctx, waypoints, snapshot, diags);
    // A ServiceEntry may not take an address a Service or a pod has (nodes key both by
    // address: the entry would capture another team's traffic, or, as a duplicate, stop every
    // node from applying the update). Services and pods first, then entries in key order.
    let mut claims: Claims = BTreeMap::new();
    for service in snapshot.services.values() {
        for vip in &service.vips {
            let holder = format!("Service {}/{}", service.namespace, service.name);
            claims.entry(*vip).or_insert(holder);
        }
    }
    for workload in snapshot.workloads.values() {
        for ip in &workload.ips {
            let holder = format!("Pod {}/{}", workload.namespace, workload.name);
            claims.entry(*ip).or_insert(holder);
        }
    }
    for (key, stored) in ctx.of_kind(Kind::ServiceEntry) {
        if let Resource::ServiceEntry(se) = &stored.resource {
            diags.set_origin(&stored.origin);
            translate_entry(ctx, waypoints, key, se, snapshot, &mut claims, diags);
        }
    }
}
