//! Applies feed versions: convert, compile a new [`Proxy`], swap it in atomically.

use std::sync::Arc;

use mesh_core::{ops::Readiness, proto::control::v1 as pb};

use super::{client::ConfigSink, convert};
use crate::{
    ingress_tls::CertResolver, proxy::Proxy, rng::SharedRng, serve::SharedProxy,
    telemetry::Metrics, upstream::Transport,
};

/// The [`ConfigSink`] that replaces the proxy in force.
pub struct Reloader {
    /// The proxy every new request uses.
    pub proxy: SharedProxy,
    /// Random source for the new proxies.
    pub rng: SharedRng,
    /// Metrics, shared across versions.
    pub metrics: Arc<Metrics>,
    /// How endpoints are reached.
    pub transport: Transport,
    /// This waypoint, to resolve policies targeting it.
    pub me: convert::WaypointName,
    /// Set once the first version is in force.
    pub readiness: Option<Readiness>,
    /// The HTTPS ingress listener's certificates, replaced with each version (when it runs).
    pub tls: Option<Arc<CertResolver>>,
}

impl ConfigSink for Reloader {
    fn apply(&self, wire: &pb::WaypointConfig) -> Result<(), String> {
        let converted = convert::convert(wire, &self.me);
        for problem in &converted.problems {
            tracing::warn!(version = converted.version, %problem, "feed config piece failed closed");
        }
        let current = self.proxy.load_full();
        let proxy = Proxy::next_version(
            &converted.waypoint,
            self.rng.clone(),
            self.metrics.clone(),
            &self.transport,
            Some(&current),
        )
        .map_err(|e| format!("version {} does not compile: {e}", converted.version))?;
        self.proxy.store(Arc::new(proxy));
        if let Some(tls) = &self.tls {
            tls.apply(converted.version, &wire.tls_credentials);
        }
        if let Some(readiness) = &self.readiness {
            readiness.set(true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arc_swap::ArcSwap;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{feed::convert::WaypointName, rng::ThreadRandom};

    fn wire(version: u64, reviews_protocol: &str) -> pb::WaypointConfig {
        let service = |name: &str, vip: u8| pb::Service {
            key: format!("default/{name}.default.svc.cluster.local"),
            name: name.into(),
            namespace: "default".into(),
            hostname: format!("{name}.default.svc.cluster.local"),
            vips: vec![vec![10, 96, 0, vip]],
            ports: vec![pb::ServicePort {
                port: 80,
                target_port: 9080,
                protocol: reviews_protocol.into(),
            }],
            ..Default::default()
        };
        let mut ratings = service("ratings", 2);
        ratings.ports[0].protocol = "http".into();
        pb::WaypointConfig {
            version,
            services: vec![service("reviews", 1), ratings],
            ..Default::default()
        }
    }

    #[test]
    fn versions_swap_in_and_keep_unchanged_destinations() {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let empty = Proxy::new(&Default::default(), Arc::new(ThreadRandom), metrics.clone());
        let shared: SharedProxy = Arc::new(ArcSwap::from_pointee(empty.expect("empty")));
        let readiness = Readiness::default();
        let reloader = Reloader {
            proxy: shared.clone(),
            rng: Arc::new(ThreadRandom),
            metrics,
            transport: Transport::Plain,
            me: WaypointName::default(),
            readiness: Some(readiness.clone()),
            tls: None,
        };
        assert!(!readiness.is_ready());
        reloader.apply(&wire(1, "http")).expect("v1");
        assert!(readiness.is_ready(), "ready once a version is in force");
        let v1 = shared.load_full();
        reloader.apply(&wire(2, "grpc")).expect("v2");
        let v2 = shared.load_full();
        assert!(!Arc::ptr_eq(&v1, &v2), "a new proxy is swapped in");
        let (reviews, ratings) = (
            "reviews.default.svc.cluster.local:80",
            "ratings.default.svc.cluster.local:80",
        );
        let same = |name: &str| {
            let (a, b) = (v1.destination(name), v2.destination(name));
            Arc::ptr_eq(a.expect("in v1"), b.expect("in v2"))
        };
        assert!(same(ratings), "unchanged destination kept");
        assert!(!same(reviews), "changed destination rebuilt");
    }
}
