//! Tunnel benchmark: throughput, request rate and latency through two node tunnels (client
//! pod -> node a -> HBONE/mTLS -> node b -> echo pod) against direct TCP to the same echo pod,
//! measured in the same run and printed as ratios, plus CPU time and peak RSS.
//!
//! Run: `cargo bench -p mesh-node --bench tunnel` (env `WEFT_BENCH_MIB`, `WEFT_BENCH_REQS`).
//! Everything (both tunnels, echo pod, load generator) shares this process and the machine's
//! cores, so absolute numbers are pessimistic; the ratios are the point.

#[path = "../tests/tunnel_support/mod.rs"]
mod tunnel_support;

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tunnel_support::{Mesh, MeshOptions};

const CHUNK: usize = 64 * 1024;
const REQUEST: usize = 1024;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Peak resident set size in MiB.
fn peak_rss_mib() -> f64 {
    // SAFETY: as above.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss as f64 / 1024.0
}

/// Sends `total` bytes and reads them back concurrently; returns MiB/s one way.
async fn throughput(stream: TcpStream, total: usize) -> anyhow::Result<f64> {
    let (mut reader, mut writer) = stream.into_split();
    let start = Instant::now();
    let write = tokio::spawn(async move {
        let chunk = vec![0xa5u8; CHUNK];
        let mut sent = 0;
        while sent < total {
            writer.write_all(&chunk).await?;
            sent += CHUNK;
        }
        anyhow::Ok(writer)
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < total {
        let n = reader.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "stream closed after {got} bytes");
        got += n;
    }
    let _writer = write.await??;
    Ok(total as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64())
}

struct Latency {
    req_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Ping-pong of `REQUEST`-byte messages on one connection.
async fn ping_pong(mut stream: TcpStream, requests: usize) -> anyhow::Result<Latency> {
    let message = vec![7u8; REQUEST];
    let mut back = vec![0u8; REQUEST];
    let mut samples = Vec::with_capacity(requests);
    let start = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        stream.write_all(&message).await?;
        stream.read_exact(&mut back).await?;
        samples.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    Ok(Latency {
        req_per_s: requests as f64 / elapsed.as_secs_f64(),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
    })
}

struct Run {
    mib_s: f64,
    latency: Latency,
    cpu: Duration,
}

async fn measure<F, Fut>(connect: F, mib: usize, requests: usize) -> anyhow::Result<Run>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = TcpStream>,
{
    // Warm-up: establishes pooled tunnels and faults in buffers.
    ping_pong(connect().await, 100).await?;
    let cpu_start = cpu_time();
    let mib_s = throughput(connect().await, mib * 1024 * 1024).await?;
    let latency = ping_pong(connect().await, requests).await?;
    Ok(Run {
        mib_s,
        latency,
        cpu: cpu_time() - cpu_start,
    })
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mib = env_or("WEFT_BENCH_MIB", 256);
        let requests = env_or("WEFT_BENCH_REQS", 5000);
        let mesh = Mesh::start(MeshOptions::default()).await;
        let db = mesh.db;
        let direct = measure(|| async { TcpStream::connect(db).await.expect("direct") }, mib, requests).await?;
        let rss_direct = peak_rss_mib();
        let tunnel = measure(|| mesh.connect(db), mib, requests).await?;
        let rss_tunnel = peak_rss_mib();
        println!("weft tunnel benchmark: {mib} MiB echoed, {requests} x {REQUEST} B ping-pong, 2 worker threads");
        println!("{:<22}{:>14}{:>14}{:>10}", "", "direct tcp", "two tunnels", "ratio");
        let row = |name: &str, d: f64, t: f64| println!("{name:<22}{d:>14.1}{t:>14.1}{:>10.2}", t / d);
        row("throughput MiB/s", direct.mib_s, tunnel.mib_s);
        row("requests/s", direct.latency.req_per_s, tunnel.latency.req_per_s);
        row("p50 latency us", direct.latency.p50_us, tunnel.latency.p50_us);
        row("p99 latency us", direct.latency.p99_us, tunnel.latency.p99_us);
        row("cpu seconds", direct.cpu.as_secs_f64(), tunnel.cpu.as_secs_f64());
        // Peak RSS is process-wide and only grows: the tunnel column includes the direct run.
        row("peak rss MiB", rss_direct, rss_tunnel);
        println!(
            "added latency: p50 +{:.0} us, p99 +{:.0} us; peak rss {rss_direct:.1} MiB after direct, {rss_tunnel:.1} MiB after tunnel (whole process)",
            tunnel.latency.p50_us - direct.latency.p50_us,
            tunnel.latency.p99_us - direct.latency.p99_us,
        );
        let outcome = tokio::time::timeout(Duration::from_secs(10), mesh.a.shutdown()).await?;
        println!("drain: {outcome:?}");
        anyhow::Ok(())
    })
}
