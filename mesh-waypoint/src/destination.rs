//! Upstream destinations: endpoints with labels, subsets, and the per-destination state
//! (load balancer, outlier detection, circuit breaker, pooled HTTP clients).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::HeaderMap;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{
    body::Body,
    config::{DestinationConfig, UpstreamProtocol},
    resilience::{
        circuit::{CircuitBreaker, LimitedConnector},
        lb::{Candidate, LoadBalancer},
        outlier::{EndpointHealth, OutlierDetector, Verdict},
        retry::RetryBudget,
    },
    rng::RandomSource,
    upstream::{HboneConnector, Transport},
};

mod pools;

pub use self::pools::{Pools, MAX_CLIENT_POOLS};

/// The pooled upstream client.
pub type HttpClient = Client<LimitedConnector, Body>;

/// One upstream endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    in_flight: AtomicUsize,
    health: Mutex<EndpointHealth>,
}

impl Candidate for Endpoint {
    fn address(&self) -> SocketAddr {
        self.address
    }
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight to an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// Starts counting.
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A destination and its shared state.
#[derive(Debug)]
pub struct Destination {
    /// Name from the configuration.
    pub name: String,
    endpoints: Vec<Arc<Endpoint>>,
    subsets: HashMap<String, Vec<Arc<Endpoint>>>,
    lb: LoadBalancer,
    outlier: Option<OutlierDetector>,
    /// Request caps.
    pub breaker: Arc<CircuitBreaker>,
    /// Caps concurrent retries (Envoy defaults: 20 % of active requests, at least 3).
    pub retry_budget: Arc<RetryBudget>,
    protocol: UpstreamProtocol,
    http1: Pools,
    http2: Pools,
    /// What this was built from, so an unchanged destination survives a config swap.
    config: DestinationConfig,
}

impl Destination {
    /// Builds the destination over plain TCP; subsets select endpoints whose labels contain the
    /// subset's.
    pub fn new(config: &DestinationConfig) -> Self {
        Self::with_transport(config, &Transport::Plain)
    }

    /// Builds the destination reaching its endpoints over `transport`.
    pub fn with_transport(config: &DestinationConfig, transport: &Transport) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = config
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(Endpoint {
                    address: e.address,
                    in_flight: AtomicUsize::new(0),
                    health: Mutex::new(EndpointHealth::default()),
                })
            })
            .collect();
        let subsets = config
            .subsets
            .iter()
            .map(|s| {
                let members = config
                    .endpoints
                    .iter()
                    .zip(&endpoints)
                    .filter(|(cfg, _)| s.labels.iter().all(|(k, v)| cfg.labels.get(k) == Some(v)))
                    .map(|(_, ep)| ep.clone())
                    .collect();
                (s.name.clone(), members)
            })
            .collect();
        let policy = &config.traffic_policy;
        Self {
            name: config.name.clone(),
            endpoints,
            subsets,
            lb: LoadBalancer::new(&policy.load_balancer),
            outlier: policy.outlier_detection.as_ref().map(OutlierDetector::new),
            breaker: Arc::new(CircuitBreaker::new(&policy.connection_pool)),
            retry_budget: Arc::new(RetryBudget::new(20, 3)),
            protocol: policy.upstream_protocol,
            http1: client(config, transport, false),
            http2: client(config, transport, true),
            config: config.clone(),
        }
    }

    /// The endpoints of a subset (all when `None`); empty for an unknown subset.
    pub fn members(&self, subset: Option<&str>) -> &[Arc<Endpoint>] {
        match subset {
            None => &self.endpoints,
            Some(s) => self.subsets.get(s).map_or(&[], Vec::as_slice),
        }
    }

    /// Picks a healthy (not ejected) endpoint of the subset.
    pub fn choose(
        &self,
        subset: Option<&str>,
        headers: &HeaderMap,
        rng: &dyn RandomSource,
    ) -> Option<Arc<Endpoint>> {
        let now = Instant::now();
        let healthy: Vec<Arc<Endpoint>> = self
            .members(subset)
            .iter()
            .filter(|e| !e.health.lock().is_ejected(now))
            .cloned()
            .collect();
        self.lb.pick(&healthy, headers, rng).cloned()
    }

    /// Records an outcome for outlier detection (no-op when it is disabled).
    pub fn record(&self, endpoint: &Endpoint, success: bool) {
        let Some(detector) = &self.outlier else {
            return;
        };
        let now = Instant::now();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.health.lock().is_ejected(now))
            .count();
        let verdict = detector.record(
            &mut endpoint.health.lock(),
            success,
            now,
            ejected,
            self.endpoints.len(),
        );
        if let Verdict::Ejected(until) = verdict {
            let secs = until.saturating_duration_since(now).as_secs();
            tracing::warn!(destination = %self.name, endpoint = %endpoint.address, secs, "endpoint ejected by outlier detection");
        }
    }

    /// Whether to speak HTTP/2 (prior knowledge, h2c) to the endpoints for a request that came
    /// in over HTTP/2 (`downstream_http2`) or is an HTTP/1.1 upgrade (`upgrade`, always HTTP/1.1).
    pub fn use_http2(&self, downstream_http2: bool, upgrade: bool) -> bool {
        match self.protocol {
            _ if upgrade => false,
            UpstreamProtocol::SameAsDownstream => downstream_http2,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
        }
    }

    /// The pooled client for the chosen version and the request's downstream client (HBONE
    /// pools are per client IP, see [`Pools`]).
    pub fn client(&self, http2: bool, downstream: Option<std::net::IpAddr>) -> HttpClient {
        if http2 {
            self.http2.get(downstream)
        } else {
            self.http1.get(downstream)
        }
    }
}

fn connector(config: &DestinationConfig, transport: &Transport) -> LimitedConnector {
    let pool = &config.traffic_policy.connection_pool;
    match transport {
        Transport::Plain => {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(pool.connect_timeout.0));
            connector.set_nodelay(true);
            LimitedConnector::new(connector, pool.max_connections)
        }
        Transport::Hbone(upstream) => LimitedConnector::hbone(
            HboneConnector::new(upstream.clone(), config),
            pool.max_connections,
        ),
    }
}

fn client(config: &DestinationConfig, transport: &Transport, http2: bool) -> Pools {
    let pool = &config.traffic_policy.connection_pool;
    let connector = connector(config, transport);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(pool.max_connections.min(256))
        .http2_only(http2);
    if http2 {
        // ztunnel's windows (HBONE.md) and keep-alive pings so dead connections are noticed.
        builder
            .timer(TokioTimer::new())
            .http2_initial_stream_window_size(4 << 20)
            .http2_initial_connection_window_size(16 << 20)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(20));
    }
    let per_client = matches!(transport, Transport::Hbone(_));
    Pools::new(builder, connector, per_client)
}

/// All destinations by name.
#[derive(Debug, Default)]
pub struct Destinations(HashMap<String, Arc<Destination>>);

impl Destinations {
    /// Builds every configured destination over plain TCP.
    pub fn new(configs: &[DestinationConfig]) -> Self {
        Self::with_transport(configs, &Transport::Plain)
    }

    /// Builds every configured destination over `transport`.
    pub fn with_transport(configs: &[DestinationConfig], transport: &Transport) -> Self {
        Self::reusing(configs, transport, &Self::default())
    }

    /// Like [`Destinations::with_transport`], but keeps every destination of `previous` whose
    /// configuration is unchanged, with its pooled connections, outlier ejections and
    /// circuit-breaker counts: a feed version that changes one service must not reset all.
    pub fn reusing(
        configs: &[DestinationConfig],
        transport: &Transport,
        previous: &Destinations,
    ) -> Self {
        let build = |c: &DestinationConfig| match previous.get(&c.name) {
            Some(old) if old.config == *c => old.clone(),
            _ => Arc::new(Destination::with_transport(c, transport)),
        };
        Self(configs.iter().map(|c| (c.name.clone(), build(c))).collect())
    }

    /// Looks one up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Destination>> {
        self.0.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::WaypointConfig, rng::Sequence};

    const CONFIG: &str = r#"
destinations:
  - name: reviews
    endpoints:
      - {address: "10.0.0.1:80", labels: {version: v1}}
      - {address: "10.0.0.2:80", labels: {version: v2, canary: "true"}}
      - {address: "10.0.0.3:80", labels: {version: v2}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: canary, labels: {version: v2, canary: "true"}}
    traffic_policy:
      load_balancer: round_robin
      outlier_detection: {consecutive_5xx: 1, base_ejection_time: 10s, max_ejection_percent: 100}
"#;

    fn destination() -> Destination {
        let cfg = WaypointConfig::parse(CONFIG).expect("yaml");
        Destination::new(&cfg.destinations[0])
    }

    fn addrs(eps: &[Arc<Endpoint>]) -> Vec<String> {
        eps.iter().map(|e| e.address.to_string()).collect()
    }

    #[tokio::test]
    async fn subsets_select_by_labels() {
        let d = destination();
        assert_eq!(addrs(d.members(Some("v1"))), vec!["10.0.0.1:80"]);
        assert_eq!(
            addrs(d.members(Some("v2"))),
            vec!["10.0.0.2:80", "10.0.0.3:80"]
        );
        assert_eq!(addrs(d.members(Some("canary"))), vec!["10.0.0.2:80"]);
        assert_eq!(d.members(None).len(), 3);
        assert!(d.members(Some("nope")).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_skipped_until_restored() {
        let d = destination();
        let rng = Sequence::new(vec![]);
        let v2 = d.members(Some("v2"))[0].clone();
        d.record(&v2, false);
        for _ in 0..4 {
            let got = d
                .choose(Some("v2"), &HeaderMap::new(), &rng)
                .expect("one healthy");
            assert_eq!(got.address.to_string(), "10.0.0.3:80");
        }
        let last = d.members(Some("v2"))[1].clone();
        d.record(&last, false);
        assert!(d.choose(Some("v2"), &HeaderMap::new(), &rng).is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(d.choose(Some("v2"), &HeaderMap::new(), &rng).is_some());
    }
}
