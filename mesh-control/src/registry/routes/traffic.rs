//! Istio DestinationRule into [`TrafficPolicy`]: load balancing, consistent hashing,
//! connection pool, outlier detection and subsets.

use std::time::Duration;

use super::common::{count, duration, header_name, invalid, Invalid};
use crate::crd::networking::{
    ConnectionPoolSettings, ConsistentHashLb, DestinationRule, LoadBalancerSettings,
    OutlierDetection as CrdOutlier,
};
use crate::model::{ConnectionPool, ConsistentHash, OutlierDetection, TrafficPolicy};
use crate::registry::{Ctx, ObjectKey};

const AT: &str = "spec.trafficPolicy";

/// The DestinationRule's traffic policy.
pub fn translate(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    dr: &DestinationRule,
) -> Result<TrafficPolicy, Invalid> {
    let policy = dr.spec.traffic_policy.as_ref();
    let lb = policy.and_then(|p| p.load_balancer.as_ref());
    Ok(TrafficPolicy {
        key: format!("{}/{}", key.namespace, key.name),
        host: ctx.fqdn(&dr.spec.host, &key.namespace),
        load_balancer: lb.map(simple).transpose()?.flatten(),
        consistent_hash: lb
            .and_then(|l| l.consistent_hash.as_ref())
            .map(consistent_hash)
            .transpose()?,
        outlier: policy
            .and_then(|p| p.outlier_detection.as_ref())
            .map(outlier)
            .transpose()?,
        connection_pool: policy
            .and_then(|p| p.connection_pool.as_ref())
            .map(connection_pool)
            .transpose()?,
        subsets: dr
            .spec
            .subsets
            .iter()
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect(),
    })
}

fn simple(lb: &LoadBalancerSettings) -> Result<Option<String>, Invalid> {
    const KNOWN: &[&str] = &[
        "ROUND_ROBIN",
        "LEAST_REQUEST",
        "RANDOM",
        "PASSTHROUGH",
        "UNSPECIFIED",
    ];
    let field = format!("{AT}.loadBalancer.simple");
    let Some(name) = &lb.simple else {
        return Ok(None);
    };
    if lb.consistent_hash.is_some() {
        return Err(invalid(
            field,
            "simple and consistentHash are mutually exclusive",
        ));
    }
    if !KNOWN.contains(&name.as_str()) {
        return Err(invalid(field, format!("unknown load balancer {name:?}")));
    }
    Ok(Some(name.clone()))
}

fn consistent_hash(c: &ConsistentHashLb) -> Result<ConsistentHash, Invalid> {
    let at = format!("{AT}.loadBalancer.consistentHash");
    match (&c.http_header_name, &c.http_cookie) {
        (Some(header), None) => Ok(ConsistentHash::Header(header_name(
            header,
            &format!("{at}.httpHeaderName"),
        )?)),
        (None, Some(cookie)) if !cookie.name.is_empty() => {
            Ok(ConsistentHash::Cookie(cookie.name.clone()))
        }
        (None, Some(_)) => Err(invalid(
            format!("{at}.httpCookie.name"),
            "a cookie name is required",
        )),
        _ => Err(invalid(
            at,
            "exactly one of httpHeaderName, httpCookie is required (other hash keys are not supported)",
        )),
    }
}

fn outlier(o: &CrdOutlier) -> Result<OutlierDetection, Invalid> {
    let at = format!("{AT}.outlierDetection");
    let percent = o.max_ejection_percent.unwrap_or(10);
    if percent > 100 {
        return Err(invalid(
            format!("{at}.maxEjectionPercent"),
            format!("{percent} is over 100"),
        ));
    }
    Ok(OutlierDetection {
        consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(5),
        interval: duration(o.interval.as_ref(), &format!("{at}.interval"))?
            .unwrap_or(Duration::from_secs(10)),
        base_ejection_time: duration(
            o.base_ejection_time.as_ref(),
            &format!("{at}.baseEjectionTime"),
        )?
        .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: percent,
    })
}

fn connection_pool(c: &ConnectionPoolSettings) -> Result<ConnectionPool, Invalid> {
    let at = format!("{AT}.connectionPool");
    let tcp = c.tcp.as_ref();
    let http = c.http.as_ref();
    Ok(ConnectionPool {
        max_connections: count(
            tcp.and_then(|t| t.max_connections),
            &format!("{at}.tcp.maxConnections"),
        )?,
        connect_timeout: duration(
            tcp.and_then(|t| t.connect_timeout.as_ref()),
            &format!("{at}.tcp.connectTimeout"),
        )?,
        max_pending_requests: count(
            http.and_then(|h| h.http1_max_pending_requests),
            &format!("{at}.http.http1MaxPendingRequests"),
        )?,
        max_requests: count(
            http.and_then(|h| h.http2_max_requests),
            &format!("{at}.http.http2MaxRequests"),
        )?,
    })
}

/// Paths of the fields present that Weft does not implement.
pub fn unsupported(dr: &DestinationRule) -> Vec<String> {
    let mut out = Vec::new();
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        out.extend(super::named(&format!("spec.subsets[{i}]"), &s.unsupported));
    }
    let Some(p) = &dr.spec.traffic_policy else {
        return out;
    };
    out.extend(super::named(AT, &p.unsupported));
    let lb = p.load_balancer.as_ref();
    let hash = lb.and_then(|l| l.consistent_hash.as_ref());
    let pool = p.connection_pool.as_ref();
    let nested = [
        ("loadBalancer", lb.map(|l| &l.unsupported)),
        ("loadBalancer.consistentHash", hash.map(|h| &h.unsupported)),
        (
            "loadBalancer.consistentHash.httpCookie",
            hash.and_then(|h| h.http_cookie.as_ref())
                .map(|c| &c.unsupported),
        ),
        (
            "connectionPool.tcp",
            pool.and_then(|c| c.tcp.as_ref()).map(|t| &t.unsupported),
        ),
        (
            "connectionPool.http",
            pool.and_then(|c| c.http.as_ref()).map(|h| &h.unsupported),
        ),
    ];
    for (part, map) in nested.into_iter() {
        if let Some(map) = map {
            out.extend(super::named(&format!("{AT}.{part}"), map));
        }
    }
    out
}
