//! Waypoint throughput and added latency against baselines measured in the same run, and the
//! waypoint's cost at a fixed request rate.
//!
//! A loopback backend (1 KiB responses) is reached directly, through the `mesh-waypoint` binary
//! (static config, plain HTTP/1.1 listener, its own process) and through nginx as a reverse
//! proxy (generated config in a temp dir; skipped with a message when nginx is missing). Each
//! target gets closed-loop HTTP/1.1 keep-alive clients; req/s, p50/p99 and the ratios are
//! printed. Then a fresh waypoint process gets an open-loop 1000 req/s (latency measured from
//! each request's scheduled send time) and its CPU time and peak RSS are read from `/proc`.
//! Knobs: `WEFT_BENCH_SECS` (per phase, default 5), `WEFT_BENCH_CONCURRENCY` (default 16),
//! `WEFT_BENCH_RATE` (default 1000), `WEFT_BENCH_NGINX_WORKERS` (default: available cores).
//! Run with `cargo bench -p mesh-waypoint --bench proxy`.

#[path = "proxy/procs.rs"]
mod procs;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
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
use tokio::{net::TcpListener, sync::Mutex};

const BODY: &[u8] = &[b'x'; 1024];

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Phase {
    name: &'static str,
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Phase {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::new(),
        }
    }

    fn add(&mut self, latencies_us: Vec<u64>, errors: usize) {
        self.requests += latencies_us.len();
        self.errors += errors;
        self.latencies_us.extend(latencies_us);
    }

    fn finish(mut self, start: Instant) -> Self {
        self.elapsed = start.elapsed();
        self.latencies_us.sort_unstable();
        self
    }

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
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if fetch(&client, target).await {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut phase = Phase::new(name);
    for w in workers {
        let (lat, errors) = w.await.expect("worker");
        phase.add(lat, errors);
    }
    phase.finish(start)
}

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(HttpConnector::new())
}

/// One GET of `/bench` with `Host: bench`; true on a 2xx with the whole body read.
async fn fetch(client: &HttpClient, target: SocketAddr) -> bool {
    let req = Request::builder()
        .uri(format!("http://{target}/bench"))
        .header("host", "bench")
        .body(Empty::new())
        .expect("request");
    match client.request(req).await {
        Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// Open loop: one request every `1/rate` s for `secs`, each on its own task, latency counted
/// from its scheduled send time (no coordinated omission).
async fn paced(name: &'static str, target: SocketAddr, secs: u64, rate: u64) -> Phase {
    let client = http_client();
    let results = Arc::new(Mutex::new(Phase::new(name)));
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity((secs * rate) as usize);
    for _ in 0..secs * rate {
        let scheduled = ticker.tick().await.into_std();
        let (client, results) = (client.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let ok = fetch(&client, target).await;
            let latency = scheduled.elapsed().as_micros() as u64;
            let mut phase = results.lock().await;
            if ok {
                phase.add(vec![latency], 0);
            } else {
                phase.add(Vec::new(), 1);
            }
        }));
    }
    for task in tasks {
        task.await.expect("request task");
    }
    let phase = std::mem::replace(&mut *results.lock().await, Phase::new(name));
    phase.finish(start)
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

/// `name` against `base`: throughput ratio and added p50/p99 (negative: faster than base).
fn compare(name: &Phase, base: &Phase) {
    let added = |p: f64| name.percentile(p) as i64 - base.percentile(p) as i64;
    println!(
        "{:<10} vs {:<8} throughput {:.2}x; added latency p50 {:+} us, p99 {:+} us",
        name.name,
        base.name,
        name.rps() / base.rps().max(1.0),
        added(0.50),
        added(0.99),
    );
}

/// Closed-loop phases: direct, waypoint, nginx (when installed), then the ratios.
async fn throughput(backend: SocketAddr, secs: u64, concurrency: usize) -> anyhow::Result<()> {
    let waypoint = procs::waypoint(backend)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let nginx = procs::nginx(backend, env("WEFT_BENCH_NGINX_WORKERS", cores) as usize)?;
    if nginx.is_none() {
        println!("nginx not found: skipping the nginx baseline (apt-get install nginx)");
    }
    let mut targets = vec![("direct", backend), ("waypoint", waypoint.addr)];
    targets.extend(nginx.as_ref().map(|n| ("nginx", n.addr)));
    // Warm pools and caches on every path before measuring.
    for (_, addr) in &targets {
        let _ = run("warmup", *addr, 1, concurrency).await;
    }
    let mut phases = Vec::new();
    for (name, addr) in targets {
        phases.push(run(name, addr, secs, concurrency).await);
    }
    phases.iter().for_each(print);
    for other in &phases[2..] {
        compare(&phases[1], other);
    }
    compare(&phases[1], &phases[0]);
    if let Some(nginx) = phases.get(2) {
        compare(nginx, &phases[0]);
    }
    Ok(())
}

/// A fresh waypoint process at a fixed open-loop rate: latency, CPU and peak RSS.
async fn fixed_rate(backend: SocketAddr, secs: u64, rate: u64) -> anyhow::Result<()> {
    let direct = paced("direct", backend, secs, rate).await;
    let waypoint = procs::waypoint(backend)?;
    let cpu_before = procs::cpu_time(waypoint.pid())?;
    let proxied = paced("waypoint", waypoint.addr, secs, rate).await;
    let cpu = procs::cpu_time(waypoint.pid())? - cpu_before;
    let rss = procs::peak_rss_kib(waypoint.pid())?;
    println!("fixed rate {rate} req/s for {secs} s (open loop):");
    print(&direct);
    print(&proxied);
    compare(&proxied, &direct);
    println!(
        "waypoint   cpu {:.3} s = {:.3} vCPU; peak rss {:.1} MiB \
         (Istio 1.24 published at 1000 req/s: Envoy waypoint 0.25 vCPU / 60 MB)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / proxied.elapsed.as_secs_f64(),
        rss as f64 / 1024.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs = env("WEFT_BENCH_SECS", 5);
    let concurrency = env("WEFT_BENCH_CONCURRENCY", 16) as usize;
    let rate = env("WEFT_BENCH_RATE", 1000);
    let backend = backend().await;
    println!(
        "waypoint bench: {secs}s per phase, {concurrency} connections, 1 KiB responses, \
         HTTP/1.1 keep-alive"
    );
    throughput(backend, secs, concurrency).await?;
    fixed_rate(backend, secs, rate).await
}
