//! Services and workloads -> destinations (one per service port) with endpoints, labels,
//! identities and the traffic policy of the service's host.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use mesh_core::{identity::SpiffeId, proto::control::v1 as pb};

use super::convert::{destination_name, ConvertError, ServiceIndex, ServiceView, WaypointName};
use crate::config::{
    default_outlier_interval, ConnectionPoolConfig, DestinationConfig, EndpointConfig,
    HumanDuration, LoadBalancerConfig, OutlierConfig, SubsetConfig, TrafficPolicy,
    UpstreamProtocol,
};

/// Istio's default outlier ejection time when the policy leaves it unset.
const DEFAULT_EJECTION: Duration = Duration::from_secs(30);

/// Indexes services by FQDN and derives their names and VIPs.
pub(super) fn index<'a>(
    services: &'a [pb::Service],
    me: &WaypointName,
    problems: &mut Vec<ConvertError>,
) -> ServiceIndex<'a> {
    let bound = |s: &pb::Service| {
        s.waypoint
            .as_ref()
            .is_some_and(|w| w.namespace == me.namespace && w.name == me.name)
    };
    services
        .iter()
        .map(|s| {
            let vips = s
                .vips
                .iter()
                .filter_map(|b| ip(&s.key, b).map_err(|e| problems.push(e)).ok())
                .collect();
            let view = ServiceView {
                wire: s,
                names: names(s),
                vips,
                bound: bound(s),
            };
            (s.hostname.to_ascii_lowercase(), view)
        })
        .collect()
}

/// The FQDN and, for a cluster Service (`<name>.<ns>.svc.<domain>`), the short forms
/// `<name>`, `<name>.<ns>` and `<name>.<ns>.svc`.
fn names(s: &pb::Service) -> Vec<String> {
    let fqdn = s.hostname.to_ascii_lowercase();
    let svc = format!("{}.{}.svc.", s.name, s.namespace).to_ascii_lowercase();
    let mut names = vec![fqdn.clone()];
    if !s.name.is_empty() && fqdn.starts_with(&svc) {
        let short = &svc[..svc.len() - 1];
        names.push(s.name.to_ascii_lowercase());
        names.push(format!("{}.{}", s.name, s.namespace).to_ascii_lowercase());
        names.push(short.to_owned());
    }
    names
}

/// An IP address from its wire bytes.
pub(super) fn ip(owner: &str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default())),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).unwrap_or_default(),
        )),
        len => Err(ConvertError::BadAddress {
            workload: owner.to_owned(),
            len,
        }),
    }
}

/// What an endpoint needs from its workload.
pub(super) struct WorkloadView<'a> {
    ip: IpAddr,
    identity: String,
    labels: &'a BTreeMap<String, String>,
    /// The waypoint the workload itself is bound to, if any.
    pub(super) waypoint: Option<&'a pb::WaypointRef>,
}

/// Workloads by uid; workloads without a usable address or identity are reported and left out.
pub(super) type Workloads<'a> = HashMap<&'a str, WorkloadView<'a>>;

/// Indexes the feed's workloads.
pub(super) fn workloads<'a>(
    wire: &'a [pb::Workload],
    problems: &mut Vec<ConvertError>,
) -> HashMap<&'a str, WorkloadView<'a>> {
    let mut out = HashMap::new();
    for w in wire {
        let view = workload(w);
        match view {
            Ok(view) => {
                out.insert(w.uid.as_str(), view);
            }
            Err(error) => problems.push(error),
        }
    }
    out
}

fn workload(w: &pb::Workload) -> Result<WorkloadView<'_>, ConvertError> {
    let first = w.addresses.first().ok_or_else(|| ConvertError::NoAddress {
        workload: w.uid.clone(),
    })?;
    if w.identity.parse::<SpiffeId>().is_err() {
        return Err(ConvertError::BadIdentity {
            workload: w.uid.clone(),
            identity: w.identity.clone(),
        });
    }
    Ok(WorkloadView {
        ip: ip(&w.uid, first)?,
        identity: w.identity.clone(),
        labels: &w.labels,
        waypoint: w.waypoint.as_ref(),
    })
}

/// One destination per service port, with the traffic policy of the service's host.
pub(super) fn destinations(
    wire: &pb::WaypointConfig,
    index: &ServiceIndex<'_>,
    workloads: &Workloads<'_>,
    problems: &mut Vec<ConvertError>,
) -> Vec<DestinationConfig> {
    let mut policies = BTreeMap::new();
    for tp in &wire.traffic_policies {
        policies.insert(tp.host.to_ascii_lowercase(), tp);
    }
    let mut out = Vec::new();
    for (host, view) in index {
        let policy = policies.get(host).copied();
        for port in &view.wire.ports {
            let Ok(number) = u16::try_from(port.port) else {
                problems.push(ConvertError::BadPort {
                    what: format!("service {host}"),
                    port: port.port,
                });
                continue;
            };
            let endpoints = endpoints(view.wire, port, workloads, problems);
            let (traffic_policy, subsets) = traffic_policy(policy, port, problems);
            out.push(DestinationConfig {
                name: destination_name(host, number),
                endpoints,
                subsets,
                traffic_policy,
            });
        }
    }
    out
}

fn endpoints(
    service: &pb::Service,
    port: &pb::ServicePort,
    workloads: &HashMap<&str, WorkloadView<'_>>,
    problems: &mut Vec<ConvertError>,
) -> Vec<EndpointConfig> {
    let mut out = Vec::new();
    for e in &service.endpoints {
        match endpoint(service, port, e, workloads) {
            Ok(endpoint) => out.push(endpoint),
            Err(error) => problems.push(error),
        }
    }
    out
}

/// The endpoint of workload `e` for service port `port`.
pub(super) fn endpoint(
    service: &pb::Service,
    port: &pb::ServicePort,
    e: &pb::Endpoint,
    workloads: &HashMap<&str, WorkloadView<'_>>,
) -> Result<EndpointConfig, ConvertError> {
    let w =
        workloads
            .get(e.workload_uid.as_str())
            .ok_or_else(|| ConvertError::UnknownWorkload {
                service: service.key.clone(),
                workload: e.workload_uid.clone(),
            })?;
    let target = e.ports.get(&port.port).copied().unwrap_or(port.target_port);
    if target == 0 {
        return Err(ConvertError::NoTargetPort {
            service: service.key.clone(),
            port: port.port,
            workload: e.workload_uid.clone(),
        });
    }
    let target = u16::try_from(target).map_err(|_| ConvertError::BadPort {
        what: format!("endpoint {} of {}", e.workload_uid, service.key),
        port: target,
    })?;
    Ok(EndpointConfig {
        address: SocketAddr::new(w.ip, target),
        labels: w.labels.clone(),
        identity: Some(w.identity.clone()),
    })
}

fn traffic_policy(
    wire: Option<&pb::TrafficPolicy>,
    port: &pb::ServicePort,
    problems: &mut Vec<ConvertError>,
) -> (TrafficPolicy, Vec<SubsetConfig>) {
    let upstream_protocol = match port.protocol.to_ascii_lowercase().as_str() {
        "http2" | "grpc" => UpstreamProtocol::Http2,
        _ => UpstreamProtocol::SameAsDownstream,
    };
    let Some(tp) = wire else {
        let policy = TrafficPolicy {
            upstream_protocol,
            ..TrafficPolicy::default()
        };
        return (policy, Vec::new());
    };
    let policy = TrafficPolicy {
        load_balancer: load_balancer(tp, problems),
        connection_pool: connection_pool(tp.connection_pool.as_ref()),
        outlier_detection: tp.outlier.as_ref().map(outlier),
        upstream_protocol,
    };
    let subsets = tp
        .subsets
        .iter()
        .map(|(name, labels)| SubsetConfig {
            name: name.clone(),
            labels: labels.labels.clone(),
        })
        .collect();
    (policy, subsets)
}

fn load_balancer(tp: &pb::TrafficPolicy, problems: &mut Vec<ConvertError>) -> LoadBalancerConfig {
    use pb::consistent_hash::Key;
    if let Some(hash) = &tp.consistent_hash {
        return match &hash.key {
            Some(Key::Header(h)) => LoadBalancerConfig::ConsistentHashHeader(h.clone()),
            Some(Key::Cookie(c)) => LoadBalancerConfig::ConsistentHashCookie(c.clone()),
            None => {
                problems.push(ConvertError::HashKey {
                    policy: tp.key.clone(),
                });
                LoadBalancerConfig::LeastRequest
            }
        };
    }
    match tp.load_balancer.as_str() {
        "" | "LEAST_REQUEST" => LoadBalancerConfig::LeastRequest,
        "ROUND_ROBIN" => LoadBalancerConfig::RoundRobin,
        "RANDOM" => LoadBalancerConfig::Random,
        other => {
            problems.push(ConvertError::LoadBalancer {
                policy: tp.key.clone(),
                value: other.to_owned(),
            });
            LoadBalancerConfig::LeastRequest
        }
    }
}

fn connection_pool(wire: Option<&pb::ConnectionPool>) -> ConnectionPoolConfig {
    let mut pool = ConnectionPoolConfig::default();
    let Some(wire) = wire else {
        return pool;
    };
    let set = |field: &mut usize, value: u32| {
        if value != 0 {
            *field = value as usize;
        }
    };
    set(&mut pool.max_connections, wire.max_connections);
    set(&mut pool.max_pending_requests, wire.max_pending_requests);
    set(&mut pool.max_requests, wire.max_requests);
    if wire.connect_timeout_ms != 0 {
        pool.connect_timeout = HumanDuration(Duration::from_millis(wire.connect_timeout_ms));
    }
    pool
}

fn outlier(wire: &pb::OutlierDetection) -> OutlierConfig {
    let ejection = match wire.base_ejection_time_ms {
        0 => DEFAULT_EJECTION,
        ms => Duration::from_millis(ms),
    };
    OutlierConfig {
        // Istio's default when unset.
        consecutive_5xx: match wire.consecutive_5xx {
            0 => 5,
            n => n,
        },
        base_ejection_time: HumanDuration(ejection),
        max_ejection_percent: match wire.max_ejection_percent {
            0 => 10,
            p => p.min(100),
        },
        interval: match wire.interval_ms {
            0 => default_outlier_interval(),
            ms => HumanDuration(Duration::from_millis(ms)),
        },
    }
}
