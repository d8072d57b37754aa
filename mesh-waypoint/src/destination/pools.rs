//! The upstream HTTP client pools of one destination and protocol.
//!
//! Over HBONE the `CONNECT` of a pooled upstream connection names the downstream client that
//! opened it (`forwarded`), and the destination node attributes the whole tunnel to that
//! client, by IP, in its metrics and L4 policy. So HBONE connections are pooled per downstream
//! client IP and never carry another client's requests; the costly part, the mTLS HTTP/2
//! connection to the node, stays shared in the HBONE client's own pool (each pooled HTTP
//! connection is one `CONNECT` stream on it). Plain TCP upstreams share one pool. The
//! connection cap is shared by every pool of the destination (one connector).

use std::{collections::HashMap, net::IpAddr};

use hyper_util::client::legacy::Builder;
use parking_lot::Mutex;

use super::HttpClient;
use crate::resilience::circuit::LimitedConnector;

/// Downstream client IPs with their own pool, per destination and protocol; past this, an
/// arbitrary one is dropped (its idle connections close, requests in flight finish).
pub const MAX_CLIENT_POOLS: usize = 1024;

/// One shared pool, or one per downstream client IP.
pub struct Pools {
    shared: HttpClient,
    per_client: Option<PerClient>,
}

struct PerClient {
    builder: Builder,
    connector: LimitedConnector,
    clients: Mutex<HashMap<IpAddr, HttpClient>>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clients = self.per_client.as_ref().map(|p| p.clients.lock().len());
        f.debug_struct("Pools")
            .field("per_client", &clients)
            .finish_non_exhaustive()
    }
}

impl Pools {
    /// Pools built by `builder` over `connector`; per downstream client IP when `per_client`.
    pub fn new(builder: Builder, connector: LimitedConnector, per_client: bool) -> Self {
        let shared = builder.build(connector.clone());
        let per_client = per_client.then(|| PerClient {
            builder,
            connector,
            clients: Mutex::new(HashMap::new()),
        });
        Self { shared, per_client }
    }

    /// The pool for a request from `downstream` (the shared one when unknown or plain).
    pub fn get(&self, downstream: Option<IpAddr>) -> HttpClient {
        match (&self.per_client, downstream) {
            (Some(per_client), Some(ip)) => per_client.get(ip),
            _ => self.shared.clone(),
        }
    }
}

impl PerClient {
    fn get(&self, ip: IpAddr) -> HttpClient {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(&ip) {
            return client.clone();
        }
        if clients.len() >= MAX_CLIENT_POOLS {
            if let Some(evicted) = clients.keys().next().copied() {
                clients.remove(&evicted);
            }
        }
        let client = self.builder.build(self.connector.clone());
        clients.insert(ip, client.clone());
        client
    }
}

#[cfg(test)]
mod tests {
    use hyper_util::{
        client::legacy::{connect::HttpConnector, Client},
        rt::TokioExecutor,
    };

    use super::*;

    fn pools(per_client: bool) -> Pools {
        let connector = LimitedConnector::new(HttpConnector::new(), 8);
        Pools::new(Client::builder(TokioExecutor::new()), connector, per_client)
    }

    fn count(pools: &Pools) -> Option<usize> {
        pools.per_client.as_ref().map(|p| p.clients.lock().len())
    }

    #[test]
    fn one_pool_per_client_ip_bounded() {
        let pools = pools(true);
        let ip = |i: u32| Some(IpAddr::from(i.to_be_bytes()));
        pools.get(ip(1));
        pools.get(ip(1));
        pools.get(None);
        assert_eq!(
            count(&pools),
            Some(1),
            "same ip, same pool; unknown: shared"
        );
        for i in 0..(MAX_CLIENT_POOLS as u32 + 10) {
            pools.get(ip(i));
        }
        assert_eq!(count(&pools), Some(MAX_CLIENT_POOLS));
        let plain = self::pools(false);
        plain.get(ip(1));
        assert_eq!(count(&plain), None, "plain upstreams share one pool");
    }
}
