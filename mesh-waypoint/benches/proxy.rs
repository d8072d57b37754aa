//! Waypoint throughput and added latency against a direct connection, measured in the same run.
//!
//! Runs a loopback backend, an in-process waypoint routing to it, and closed-loop HTTP/1.1
//! clients (keep-alive) against each target in turn, then prints req/s, p50/p99 latency and
//! the ratios. Knobs: `WEFT_BENCH_SECS` (per phase, default 5), `WEFT_BENCH_CONCURRENCY`
//! (default 16). Run with `cargo bench -p mesh-waypoint --bench proxy`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_waypoint::{
    app::{self, AppConfig},
    config::WaypointConfig,
};
use tokio::net::TcpListener;

const BODY: &[u8] = &[b'x'; 1024];

struct Phase {
    name: &'static str,
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Phase {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[index]
    }
}

async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn run(name: &'static str, target: SocketAddr, secs: u64, concurrency: usize) -> Phase {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let req = Request::builder()
                        .uri(format!("http://{target}/bench"))
                        .header("host", "bench")
                        .body(Empty::new())
                        .expect("request");
                    let sent = Instant::now();
                    let ok = match client.request(req).await {
                        Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut phase = Phase {
        name,
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for w in workers {
        let (lat, errors) = w.await.expect("worker");
        phase.requests += lat.len();
        phase.errors += errors;
        phase.latencies_us.extend(lat);
    }
    phase.elapsed = start.elapsed();
    phase.latencies_us.sort_unstable();
    phase
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn print(p: &Phase) {
    println!(
        "{:<10} {:>10.0} req/s  p50 {:>6} us  p99 {:>6} us  ({} ok, {} errors)",
        p.name,
        p.rps(),
        p.percentile(0.50),
        p.percentile(0.99),
        p.requests,
        p.errors
    );
}

#[tokio::main]
async fn main() {
    let secs = env("WEFT_BENCH_SECS", 5);
    let concurrency = env("WEFT_BENCH_CONCURRENCY", 16) as usize;
    let backend = backend().await;
    let yaml = format!(
        "destinations: [{{name: b, endpoints: [{{address: \"{backend}\"}}]}}]\n\
         routes: [{{name: r, hosts: [bench], rules: [{{route: [{{destination: b}}]}}]}}]\n"
    );
    let config = WaypointConfig::parse(&yaml).expect("bench config");
    let bound = app::build(AppConfig::new("127.0.0.1:0".parse().expect("addr"), config))
        .await
        .expect("waypoint");
    println!("waypoint bench: {secs}s per phase, {concurrency} connections, 1 KiB responses, HTTP/1.1 keep-alive");
    // Warm pools and caches on both paths before measuring.
    let _ = run("warmup", backend, 1, concurrency).await;
    let _ = run(
        "warmup",
        bound.proxy_addr.expect("plain listener"),
        1,
        concurrency,
    )
    .await;
    let direct = run("direct", backend, secs, concurrency).await;
    let proxied = run(
        "waypoint",
        bound.proxy_addr.expect("plain listener"),
        secs,
        concurrency,
    )
    .await;
    print(&direct);
    print(&proxied);
    println!(
        "ratio      throughput {:.2}x of direct; added latency p50 {} us, p99 {} us",
        proxied.rps() / direct.rps().max(1.0),
        proxied
            .percentile(0.50)
            .saturating_sub(direct.percentile(0.50)),
        proxied
            .percentile(0.99)
            .saturating_sub(direct.percentile(0.99)),
    );
    let _ = bound.shutdown(Duration::from_secs(2)).await;
}
