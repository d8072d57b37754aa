//! Routes and traffic policies on the wire (`waypoint.proto`).

use mesh_core::proto::control::v1 as pb;

use super::millis;
use crate::model;

fn string_match(m: &model::StringMatch) -> pb::StringMatch {
    use pb::string_match::Kind;
    let kind = match m {
        model::StringMatch::Exact(v) => Kind::Exact(v.clone()),
        model::StringMatch::Prefix(v) => Kind::Prefix(v.clone()),
        model::StringMatch::Regex(v) => Kind::Regex(v.clone()),
    };
    pb::StringMatch { kind: Some(kind) }
}

fn header_match(h: &model::HeaderMatch) -> pb::HeaderMatch {
    pb::HeaderMatch {
        name: h.name.clone(),
        value: h.value.as_ref().map(string_match),
        invert: h.invert,
    }
}

fn route_match(m: &model::RouteMatch) -> pb::RouteMatch {
    pb::RouteMatch {
        path: m.path.as_ref().map(string_match),
        method: m.method.clone().unwrap_or_default(),
        headers: m.headers.iter().map(header_match).collect(),
        port: m.port.map_or(0, u32::from),
        query_params: m.query_params.iter().map(header_match).collect(),
    }
}

fn backend(b: &model::Backend) -> pb::Backend {
    pb::Backend {
        host: b.host.clone(),
        port: b.port.map_or(0, u32::from),
        weight: b.weight,
        subset: b.subset.clone().unwrap_or_default(),
    }
}

fn path_rewrite(p: &model::PathRewrite) -> pb::PathRewrite {
    use pb::path_rewrite::Kind;
    let kind = match p {
        model::PathRewrite::Full(v) => Kind::Full(v.clone()),
        model::PathRewrite::Prefix(v) => Kind::Prefix(v.clone()),
    };
    pb::PathRewrite { kind: Some(kind) }
}

fn redirect(r: &model::Redirect) -> pb::Redirect {
    pb::Redirect {
        path: r.path.as_ref().map(path_rewrite),
        authority: r.authority.clone().unwrap_or_default(),
        scheme: r.scheme.clone().unwrap_or_default(),
        port: r.port.map_or(0, u32::from),
        code: r.code.into(),
    }
}

fn header_ops(h: &model::HeaderOps) -> Option<pb::HeaderOps> {
    (!h.is_empty()).then(|| pb::HeaderOps {
        set: h.set.clone().into_iter().collect(),
        add: h.add.clone().into_iter().collect(),
        remove: h.remove.clone(),
    })
}

fn fault(f: &model::Fault) -> Option<pb::Fault> {
    if f.delay.is_none() && f.abort.is_none() {
        return None;
    }
    Some(pb::Fault {
        delay: f.delay.map(|(delay, share)| pb::DelayFault {
            percentage: share.percent(),
            fixed_delay_ms: millis(Some(delay)),
        }),
        abort: f.abort.map(|(status, share)| pb::AbortFault {
            percentage: share.percent(),
            http_status: status.into(),
        }),
    })
}

fn mirror(m: &model::Mirror) -> pb::Mirror {
    pb::Mirror {
        host: m.host.clone(),
        port: m.port.map_or(0, u32::from),
        subset: m.subset.clone().unwrap_or_default(),
        percentage: Some(m.percentage.percent()),
    }
}

fn route_rule(r: &model::RouteRule) -> pb::RouteRule {
    let (redirect, direct_response) = match &r.answer {
        None => (None, None),
        Some(model::Answer::Redirect(r)) => (Some(redirect(r)), None),
        Some(model::Answer::Direct(d)) => {
            let body = d.body.clone();
            let direct = pb::DirectResponse {
                status: d.status.into(),
                body,
            };
            (None, Some(direct))
        }
    };
    pb::RouteRule {
        matches: r.matches.iter().map(route_match).collect(),
        backends: r.backends.iter().map(backend).collect(),
        timeout_ms: millis(r.timeout),
        retry: r.retry.as_ref().map(|retry| pb::Retry {
            attempts: retry.attempts,
            per_try_timeout_ms: millis(retry.per_try_timeout),
            retry_on: retry.retry_on.clone(),
        }),
        name: r.name.clone().unwrap_or_default(),
        redirect,
        direct_response,
        rewrite: r.rewrite.as_ref().map(|w| pb::Rewrite {
            path: w.path.as_ref().map(path_rewrite),
            authority: w.authority.clone().unwrap_or_default(),
        }),
        request_headers: header_ops(&r.request_headers),
        response_headers: header_ops(&r.response_headers),
        fault: fault(&r.fault),
        mirror: r.mirror.as_ref().map(mirror),
    }
}

/// A route on the wire.
pub fn route(r: &model::Route) -> pb::Route {
    pb::Route {
        key: r.key.clone(),
        hosts: r.hosts.clone(),
        port: r.port.map_or(0, u32::from),
        rules: r.rules.iter().map(route_rule).collect(),
    }
}

fn connection_pool(c: &model::ConnectionPool) -> pb::ConnectionPool {
    pb::ConnectionPool {
        max_connections: c.max_connections.unwrap_or(0),
        max_pending_requests: c.max_pending_requests.unwrap_or(0),
        max_requests: c.max_requests.unwrap_or(0),
        connect_timeout_ms: millis(c.connect_timeout),
    }
}

fn consistent_hash(c: &model::ConsistentHash) -> pb::ConsistentHash {
    use pb::consistent_hash::Key;
    let key = match c {
        model::ConsistentHash::Header(h) => Key::Header(h.clone()),
        model::ConsistentHash::Cookie(c) => Key::Cookie(c.clone()),
    };
    pb::ConsistentHash { key: Some(key) }
}

/// A traffic policy on the wire.
pub fn traffic_policy(t: &model::TrafficPolicy) -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        key: t.key.clone(),
        host: t.host.clone(),
        load_balancer: t.load_balancer.clone().unwrap_or_default(),
        outlier: t.outlier.as_ref().map(|o| pb::OutlierDetection {
            consecutive_5xx: o.consecutive_5xx,
            interval_ms: millis(Some(o.interval)),
            base_ejection_time_ms: millis(Some(o.base_ejection_time)),
            max_ejection_percent: o.max_ejection_percent,
        }),
        subsets: t
            .subsets
            .iter()
            .map(|(name, labels)| {
                let labels = labels.clone().into_iter().collect();
                (name.clone(), pb::Labels { labels })
            })
            .collect(),
        connection_pool: t.connection_pool.as_ref().map(connection_pool),
        consistent_hash: t.consistent_hash.as_ref().map(consistent_hash),
    }
}
