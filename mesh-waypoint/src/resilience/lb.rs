//! Load balancing among a destination's healthy endpoints: round robin, random, least request
//! (power of two choices, Istio's default) and consistent hashing on a header or cookie.
//!
//! Consistent hashing uses rendezvous (highest random weight) hashing: each request key picks
//! the endpoint with the highest hash of (key, endpoint), so removing an endpoint only moves
//! the keys that were on it, like Envoy's ring hash, with no ring to rebuild.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use http::{header::COOKIE, HeaderMap, HeaderName};

use crate::{config::LoadBalancerConfig, rng::RandomSource};

/// An endpoint as the balancer sees it.
pub trait Candidate {
    /// Its address, the identity used for hashing.
    fn address(&self) -> SocketAddr;
    /// Requests in flight to it.
    fn in_flight(&self) -> usize;
}

/// The configured algorithm with its state.
#[derive(Debug)]
pub enum LoadBalancer {
    /// Round robin over the candidates.
    RoundRobin(AtomicUsize),
    /// Uniform random.
    Random,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Consistent hash of a header value.
    HashHeader(HeaderName),
    /// Consistent hash of a cookie value.
    HashCookie(String),
}

impl LoadBalancer {
    /// From configuration; an invalid hash header name falls back to least request.
    pub fn new(config: &LoadBalancerConfig) -> Self {
        match config {
            LoadBalancerConfig::RoundRobin => Self::RoundRobin(AtomicUsize::new(0)),
            LoadBalancerConfig::Random => Self::Random,
            LoadBalancerConfig::LeastRequest => Self::LeastRequest,
            LoadBalancerConfig::ConsistentHashHeader(h) => {
                HeaderName::from_bytes(h.as_bytes()).map_or(Self::LeastRequest, Self::HashHeader)
            }
            LoadBalancerConfig::ConsistentHashCookie(c) => Self::HashCookie(c.clone()),
        }
    }

    /// Picks one candidate; `None` only when there are none.
    pub fn pick<'a, C: Candidate>(
        &self,
        candidates: &'a [Arc<C>],
        headers: &HeaderMap,
        rng: &dyn RandomSource,
    ) -> Option<&'a Arc<C>> {
        let n = candidates.len();
        if n <= 1 {
            return candidates.first();
        }
        let index = match self {
            Self::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % n,
            Self::Random => rng.below(n as u64) as usize,
            Self::LeastRequest => two_choices(candidates, rng),
            Self::HashHeader(name) => match headers.get(name) {
                Some(v) => rendezvous(candidates, v.as_bytes()),
                None => rng.below(n as u64) as usize,
            },
            Self::HashCookie(name) => match cookie(headers, name) {
                Some(v) => rendezvous(candidates, v.as_bytes()),
                None => rng.below(n as u64) as usize,
            },
        };
        candidates.get(index)
    }
}

fn two_choices<C: Candidate>(candidates: &[Arc<C>], rng: &dyn RandomSource) -> usize {
    let n = candidates.len() as u64;
    let a = rng.below(n) as usize;
    // A second, distinct index.
    let b = (a + 1 + rng.below(n - 1) as usize) % n as usize;
    if candidates[b].in_flight() < candidates[a].in_flight() {
        b
    } else {
        a
    }
}

fn rendezvous<C: Candidate>(candidates: &[Arc<C>], key: &[u8]) -> usize {
    let score = |c: &Arc<C>| {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        c.address().hash(&mut h);
        h.finish()
    };
    (0..candidates.len())
        .max_by_key(|&i| score(&candidates[i]))
        .unwrap_or(0)
}

/// The value of cookie `name` in any `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Sequence;

    #[derive(Debug)]
    struct Fake(SocketAddr, usize);

    impl Candidate for Fake {
        fn address(&self) -> SocketAddr {
            self.0
        }
        fn in_flight(&self) -> usize {
            self.1
        }
    }

    fn endpoints(loads: &[usize]) -> Vec<Arc<Fake>> {
        loads
            .iter()
            .enumerate()
            .map(|(i, l)| Arc::new(Fake(SocketAddr::from(([10, 0, 0, i as u8], 80)), *l)))
            .collect()
    }

    fn picks(
        lb: &LoadBalancer,
        eps: &[Arc<Fake>],
        headers: &HeaderMap,
        rng: &dyn RandomSource,
        n: usize,
    ) -> Vec<u8> {
        (0..n)
            .map(|_| match lb.pick(eps, headers, rng).map(|e| e.0.ip()) {
                Some(std::net::IpAddr::V4(ip)) => ip.octets()[3],
                _ => u8::MAX,
            })
            .collect()
    }

    #[test]
    fn round_robin_cycles() {
        let lb = LoadBalancer::new(&LoadBalancerConfig::RoundRobin);
        let got = picks(
            &lb,
            &endpoints(&[0, 0, 0]),
            &HeaderMap::new(),
            &Sequence::new(vec![]),
            6,
        );
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn random_follows_the_rng() {
        let lb = LoadBalancer::new(&LoadBalancerConfig::Random);
        let got = picks(
            &lb,
            &endpoints(&[0, 0, 0]),
            &HeaderMap::new(),
            &Sequence::new(vec![2, 4, 0]),
            3,
        );
        assert_eq!(got, vec![2, 1, 0]);
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two() {
        let lb = LoadBalancer::new(&LoadBalancerConfig::LeastRequest);
        let eps = endpoints(&[5, 1, 9]);
        // Rolls: first index 0, offset 0 -> second index 1: picks 1 (load 1 < 5).
        assert_eq!(
            picks(&lb, &eps, &HeaderMap::new(), &Sequence::new(vec![0, 0]), 1),
            vec![1]
        );
        // First index 2, offset 1 -> second index 1: picks 1 (load 1 < 9).
        assert_eq!(
            picks(&lb, &eps, &HeaderMap::new(), &Sequence::new(vec![2, 1]), 1),
            vec![1]
        );
        // First index 0, offset 1 -> second index 2: picks 0 (load 5 < 9).
        assert_eq!(
            picks(&lb, &eps, &HeaderMap::new(), &Sequence::new(vec![0, 1]), 1),
            vec![0]
        );
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_little() {
        let lb = LoadBalancer::new(&LoadBalancerConfig::ConsistentHashHeader("x-user".into()));
        let eps = endpoints(&[0; 5]);
        let rng = Sequence::new(vec![]);
        let mut moved = 0;
        for user in 0..200 {
            let mut h = HeaderMap::new();
            h.insert("x-user", user.to_string().parse().expect("value"));
            let first = picks(&lb, &eps, &h, &rng, 3);
            assert!(
                first.iter().all(|p| *p == first[0]),
                "sticky for user {user}"
            );
            let fewer = picks(&lb, &eps[..4], &h, &rng, 1)[0];
            if fewer != first[0] {
                moved += 1;
                assert_eq!(first[0], 4, "only keys on the removed endpoint move");
            }
        }
        assert!(moved > 0 && moved < 100, "moved {moved}");
    }

    #[test]
    fn cookie_hash_reads_the_named_cookie() {
        let lb = LoadBalancer::new(&LoadBalancerConfig::ConsistentHashCookie("session".into()));
        let eps = endpoints(&[0; 4]);
        let rng = Sequence::new(vec![0, 1, 2, 3]);
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1; session=abc".parse().expect("value"));
        let got = picks(&lb, &eps, &h, &rng, 4);
        assert!(got.iter().all(|p| *p == got[0]), "{got:?}");
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
    }
}
