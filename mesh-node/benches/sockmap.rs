//! Same-node app <-> tunnel traffic with and without the `sk_msg` splice path, measured in one
//! run: request/response round trips and one-way throughput over a redirected connection from an
//! enrolled pod to a stand-in tunnel. Prints absolute numbers and spliced/plain ratios; asserts
//! nothing about timing. Needs root: `cargo bench -p mesh-node --bench sockmap`.

#[path = "../tests/redirect_support/mod.rs"]
mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use mesh_node::redirect::{Config, EnrollMode, Redirect};
use support::{accept_within, listen_on, v4, Pod, TestCgroup, WAIT};

const ROUND_TRIPS: usize = 20_000;
const MESSAGE: usize = 64;
const STREAM_BYTES: usize = 512 << 20;
const CHUNK: usize = 64 << 10;

/// Results of one configuration.
struct Sample {
    round_trip: Duration,
    throughput_mib_s: f64,
}

fn main() -> Result<()> {
    let _serial = support::serial();
    let pod = Pod::new(41).context("create pod netns")?;
    let plain = measure(&pod, false)?;
    let spliced = measure(&pod, true)?;
    let per_rt = |s: &Sample| s.round_trip.as_secs_f64() * 1e6 / ROUND_TRIPS as f64;
    println!("same-node app<->tunnel over a redirected connection ({ROUND_TRIPS} x {MESSAGE} B round trips, {} MiB stream)", STREAM_BYTES >> 20);
    println!(
        "  plain TCP : {:8.2} us/round trip {:10.1} MiB/s",
        per_rt(&plain),
        plain.throughput_mib_s
    );
    println!(
        "  sockmap   : {:8.2} us/round trip {:10.1} MiB/s",
        per_rt(&spliced),
        spliced.throughput_mib_s
    );
    println!(
        "  ratio sockmap/plain: latency {:.2}x, throughput {:.2}x",
        per_rt(&spliced) / per_rt(&plain),
        spliced.throughput_mib_s / plain.throughput_mib_s
    );
    Ok(())
}

fn measure(pod: &Pod, splice: bool) -> Result<Sample> {
    let cgroup = TestCgroup::join(if splice {
        "wfte-bench-splice"
    } else {
        "wfte-bench-plain"
    })?;
    let tunnel = listen_on(pod.host_ip);
    let original = listen_on(pod.host_ip);
    let mut config = Config::new(&cgroup.relative, v4(&tunnel));
    config.splice = splice;
    let mut redirect = Redirect::load(&config).context("load eBPF programs (root needed)")?;
    redirect.enroll(pod.cookie(), EnrollMode::Capture)?;
    let target = SocketAddr::V4(v4(&original));

    let (mut client, echo) = connected(pod, &tunnel, target)?;
    let echo = thread::spawn(move || echo_until_eof(echo));
    let round_trip = ping_pong(&mut client)?;
    drop(client);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;

    let (mut client, sink) = connected(pod, &tunnel, target)?;
    let sink = thread::spawn(move || drain(sink));
    let start = Instant::now();
    let chunk = vec![0x5au8; CHUNK];
    for _ in 0..STREAM_BYTES / CHUNK {
        client.write_all(&chunk)?;
    }
    client.shutdown(std::net::Shutdown::Write)?;
    let received = sink
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        received == STREAM_BYTES,
        "sink got {received} of {STREAM_BYTES} bytes"
    );
    let counters = redirect.counters()?;
    anyhow::ensure!(
        !splice || counters.splice_redirected > 0,
        "splice path unused: {counters:?}"
    );
    let throughput_mib_s = STREAM_BYTES as f64 / (1 << 20) as f64 / elapsed.as_secs_f64();
    Ok(Sample {
        round_trip,
        throughput_mib_s,
    })
}

fn connected(
    pod: &Pod,
    tunnel: &TcpListener,
    target: SocketAddr,
) -> Result<(TcpStream, TcpStream)> {
    let client = pod.connect(target).context("connect from pod")?;
    client.set_nodelay(true)?;
    let accepted =
        accept_within(tunnel, WAIT)?.context("tunnel did not get the redirected connect")?;
    accepted.set_nodelay(true)?;
    Ok((client, accepted))
}

fn ping_pong(client: &mut TcpStream) -> Result<Duration> {
    let request = [7u8; MESSAGE];
    let mut response = [0u8; MESSAGE];
    let start = Instant::now();
    for _ in 0..ROUND_TRIPS {
        client.write_all(&request)?;
        client.read_exact(&mut response)?;
    }
    Ok(start.elapsed())
}

fn echo_until_eof(mut stream: TcpStream) -> Result<()> {
    let mut buf = [0u8; MESSAGE];
    loop {
        match stream.read(&mut buf)? {
            0 => return Ok(()),
            n => stream.write_all(&buf[..n])?,
        }
    }
}

fn drain(mut stream: TcpStream) -> Result<usize> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        match stream.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}
