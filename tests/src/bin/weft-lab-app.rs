//! `weft-lab-app`: the sample application of the local lab.
//!
//! `serve` answers every HTTP request with one line naming the app, its version and the pod
//! (optionally after calling an upstream service, so one service calls another); `get` sends
//! requests and prints each response's status and first body line, or a tally with `--summary`.
//! Plain HTTP/1.1 over std sockets: the app must not share code with the mesh it is testing.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

/// Limits that keep a misbehaving peer from wedging the app.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_LINES: usize = 100;
const MAX_BODY: u64 = 64 * 1024;

#[derive(Debug, Parser)]
#[command(about = "Sample app for the Weft lab: an HTTP service that reports its version")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Serve HTTP, answering `<name> <version>` to every request.
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// Call this `host:port` for every request and append its answer (service-to-service).
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Send GET requests to `target` (`host:port`) and print what comes back.
    Get {
        target: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Extra request header, `Name: value`; repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Print a tally of answers instead of each one.
        #[arg(long)]
        summary: bool,
        /// Print each whole response body instead of its first line.
        #[arg(long, conflicts_with = "summary")]
        body: bool,
        /// Give up on connecting and on each read after this many milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Open `connections` TCP connections to `target` and keep them open, idle, for `seconds`
    /// (prints `open <n>` once all are established): memory per idle connection, measured by
    /// the lab benchmark.
    Hold {
        target: SocketAddr,
        #[arg(long)]
        connections: u32,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Mode::Serve {
            listen,
            name,
            version,
            upstream,
        } => serve(listen, &name, &version, upstream),
        Mode::Get {
            target,
            path,
            count,
            headers,
            summary,
            body,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            if body {
                let (status, text) = request(&target, &path, &headers, timeout)?;
                println!("{status}\n{text}");
                return Ok(());
            }
            get(&target, &path, count, &headers, summary, timeout)
        }
        Mode::Hold {
            target,
            connections,
            seconds,
        } => hold(target, connections, Duration::from_secs(seconds)),
    }
}

fn hold(target: SocketAddr, connections: u32, seconds: Duration) -> anyhow::Result<()> {
    let mut open = Vec::with_capacity(connections as usize);
    for index in 0..connections {
        let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)
            .with_context(|| format!("connection {index} of {connections} to {target}"))?;
        open.push(stream);
    }
    // Silent on purpose: the mesh sets up each tunnel at connect, so what it holds from here on
    // is its cost of an idle connection.
    println!("open {}", open.len());
    std::io::stdout().flush()?;
    std::thread::sleep(seconds);
    Ok(())
}

fn serve(
    listen: SocketAddr,
    name: &str,
    version: &str,
    upstream: Option<String>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    eprintln!("{name} {version} listening on {listen}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let identity = format!("{name} {version}");
        let upstream = upstream.clone();
        std::thread::spawn(move || {
            if let Err(error) = answer(stream, &identity, upstream.as_deref()) {
                eprintln!("request failed: {error:#}");
            }
        });
    }
    Ok(())
}

fn answer(stream: TcpStream, identity: &str, upstream: Option<&str>) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (request_line, _headers) = read_head(&mut reader)?;
    let mut body = format!("{identity} (peer {peer})");
    if let Some(upstream) = upstream {
        let answer = match request(upstream, "/", &[], IO_TIMEOUT) {
            Ok((status, text)) => format!("{status} {}", text.lines().next().unwrap_or_default()),
            Err(error) => format!("error: {error:#}"),
        };
        body.push_str(&format!(" -> {answer}"));
    }
    eprintln!("{request_line} from {peer}");
    body.push('\n');
    // One write: `write!` on the bare socket sends each formatted piece as its own segment.
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    stream.write_all(response.as_bytes())?;
    Ok(())
}

/// Reads a request or response head: the first line and the header lines.
fn read_head(reader: &mut impl BufRead) -> anyhow::Result<(String, Vec<String>)> {
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if headers.len() == MAX_HEADER_LINES {
            bail!("more than {MAX_HEADER_LINES} header lines");
        }
        headers.push(line.trim_end().to_string());
    }
    Ok((first.trim_end().to_string(), headers))
}

/// One GET request; returns the status code and the body.
fn request(
    target: &str,
    path: &str,
    headers: &[String],
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let address = target
        .parse::<SocketAddr>()
        .with_context(|| format!("target {target:?} must be ip:port"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connect to {target}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {target}\r\nconnection: close\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let (status_line, _) = read_head(&mut reader)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut body = String::new();
    reader.take(MAX_BODY).read_to_string(&mut body)?;
    Ok((status, body))
}

/// `a (peer x) -> b (peer y)` -> `a -> b`.
fn without_peers(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find(" (peer ") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find(')')
            .map_or("", |end| &rest[start + end + 1..]);
    }
    out.push_str(rest);
    out
}

fn get(
    target: &str,
    path: &str,
    count: u32,
    headers: &[String],
    summary: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut tally: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..count {
        let line = match request(target, path, headers, timeout) {
            Ok((status, body)) => {
                // Drop peer addresses so answers from one version tally together.
                let first = body.lines().next().unwrap_or_default();
                format!("{status} {}", without_peers(first))
            }
            Err(error) => format!("error: {error:#}"),
        };
        if summary {
            *tally.entry(line).or_default() += 1;
        } else {
            println!("{line}");
        }
    }
    for (answer, seen) in tally {
        println!("{seen:>5} x {answer}");
    }
    Ok(())
}
