//! The load generators (iperf3, wrk) run inside a lab pod, and what their output says.

use std::path::Path;

use anyhow::{bail, Context};
use weft_tests::lab::Lab;

/// The TCP port every bench server pod's iperf3 server listens on.
pub const IPERF_PORT: u16 = 5201;
/// The port every bench server pod's nginx listens on.
pub const HTTP_PORT: u16 = 8081;

/// One load run's result.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The scenario's figure of merit: Gbit/s for iperf3, requests/s for wrk.
    pub value: f64,
    /// Bytes (iperf3, received) or requests (wrk) the run carried: CPU is divided by this.
    pub units: f64,
    /// 99th percentile latency in milliseconds (wrk only).
    pub p99_ms: Option<f64>,
}

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// iperf3 with this many parallel streams.
    Iperf { streams: u32 },
    /// wrk against nginx with this many keep-alive connections.
    KeepAlive { connections: u32 },
    /// wrk with `Connection: close`: a new TCP connection (and tunnel) per request.
    NewConnection { connections: u32 },
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Iperf { streams: 1 },
        Scenario::Iperf { streams: 4 },
        Scenario::KeepAlive { connections: 32 },
        Scenario::KeepAlive { connections: 1 },
        Scenario::NewConnection { connections: 32 },
    ];

    pub fn name(self) -> String {
        match self {
            Scenario::Iperf { streams: 1 } => "iperf3, 1 stream (Gbit/s)".into(),
            Scenario::Iperf { streams } => format!("iperf3, {streams} streams (Gbit/s)"),
            Scenario::KeepAlive { connections: 1 } => "wrk, 1 connection (req/s)".into(),
            Scenario::KeepAlive { connections } => {
                format!("wrk, {connections} keep-alive connections (req/s)")
            }
            Scenario::NewConnection { connections } => {
                format!("wrk, new connection per request, {connections} at once (req/s)")
            }
        }
    }

    /// A short stable key for the JSON report.
    pub fn key(self) -> String {
        match self {
            Scenario::Iperf { streams } => format!("iperf3_{streams}_streams"),
            Scenario::KeepAlive { connections } => format!("wrk_keepalive_{connections}"),
            Scenario::NewConnection { connections } => format!("wrk_new_connection_{connections}"),
        }
    }

    pub fn is_http(self) -> bool {
        !matches!(self, Scenario::Iperf { .. })
    }

    /// Runs the scenario from pod `client` against `target_ip` for `seconds`.
    pub fn run(
        self,
        lab: &Lab,
        client: &str,
        target_ip: &str,
        seconds: u32,
    ) -> anyhow::Result<Outcome> {
        // A hung load generator must not hang the bench: `timeout` ends it.
        let limit = (seconds + 30).to_string();
        let duration = seconds.to_string();
        let outcome = match self {
            Scenario::Iperf { streams } => {
                let port = IPERF_PORT.to_string();
                let streams = streams.to_string();
                let args = [
                    &limit,
                    "iperf3",
                    "-c",
                    target_ip,
                    "-p",
                    &port,
                    "-t",
                    &duration,
                    "-P",
                    &streams,
                    "-J",
                    "--connect-timeout",
                    "5000",
                ];
                let out = lab.run_in_pod(client, Path::new("timeout"), &args)?;
                parse_iperf(&out)?
            }
            Scenario::KeepAlive { connections } | Scenario::NewConnection { connections } => {
                let url = format!("http://{target_ip}:{HTTP_PORT}/");
                let connections_arg = connections.to_string();
                let threads = if connections > 1 { "2" } else { "1" };
                let duration = format!("{seconds}s");
                let mut args = vec![
                    limit.as_str(),
                    "wrk",
                    "-t",
                    threads,
                    "-c",
                    &connections_arg,
                    "-d",
                    &duration,
                    "--latency",
                    "--timeout",
                    "5s",
                ];
                if matches!(self, Scenario::NewConnection { .. }) {
                    args.extend(["-H", "Connection: close"]);
                }
                args.push(&url);
                let out = lab.run_in_pod(client, Path::new("timeout"), &args)?;
                parse_wrk(&out)?
            }
        };
        Ok(outcome)
    }
}

/// `iperf3 -J`: what the receiver got.
fn parse_iperf(json: &str) -> anyhow::Result<Outcome> {
    let report: serde_json::Value =
        serde_json::from_str(json).context("iperf3 -J printed no JSON")?;
    if let Some(error) = report.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {error}");
    }
    let received = &report["end"]["sum_received"];
    let bits = received["bits_per_second"]
        .as_f64()
        .context("iperf3 report without end.sum_received.bits_per_second")?;
    let bytes = received["bytes"].as_f64().unwrap_or_default();
    if bytes <= 0.0 {
        bail!("iperf3 received nothing");
    }
    Ok(Outcome {
        value: bits / 1e9,
        units: bytes,
        p99_ms: None,
    })
}

/// wrk's text report: `Requests/sec:`, the request count and the 99% latency.
fn parse_wrk(text: &str) -> anyhow::Result<Outcome> {
    let mut rate = None;
    let mut requests = None;
    let mut p99 = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            rate = value.trim().parse::<f64>().ok();
        } else if let Some(count) = line.split_once(" requests in ") {
            requests = count.0.trim().parse::<f64>().ok();
        } else if let Some(value) = line.strip_prefix("99%") {
            p99 = parse_duration_ms(value.trim());
        } else if line.starts_with("Non-2xx") {
            bail!("wrk got error answers: {line}\n{text}");
        }
    }
    let (Some(rate), Some(requests)) = (rate, requests) else {
        bail!("wrk printed no request rate:\n{text}");
    };
    if requests <= 0.0 {
        bail!("wrk completed no request:\n{text}");
    }
    Ok(Outcome {
        value: rate,
        units: requests,
        p99_ms: p99,
    })
}

/// wrk's `4.30ms`, `812.00us`, `1.02s`.
fn parse_duration_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_report() {
        let text = "Running 2s test @ http://10.211.2.41:8081/\n  2 threads and 32 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.10ms  300.00us   \
            9.00ms   90.00%\n  Latency Distribution\n     50%    1.00ms\n     75%    1.20ms\n     \
            90%    1.50ms\n     99%  812.50us\n  54321 requests in 2.00s, 8.00MB read\n\
            Requests/sec:  27160.50\nTransfer/sec:      4.00MB\n";
        let outcome = parse_wrk(text).unwrap();
        assert_eq!(outcome.value, 27160.5);
        assert_eq!(outcome.units, 54321.0);
        assert_eq!(outcome.p99_ms, Some(0.8125));
    }

    #[test]
    fn wrk_errors_fail_the_run() {
        let text = "  10 requests in 2.00s\n  Non-2xx or 3xx responses: 10\nRequests/sec: 5.00\n";
        assert!(parse_wrk(text).is_err());
        assert!(parse_wrk("connection refused").is_err());
    }

    #[test]
    fn reads_iperf_report() {
        let json = r#"{"end":{"sum_received":{"bytes":1250000000,"bits_per_second":1.0e10}}}"#;
        let outcome = parse_iperf(json).unwrap();
        assert_eq!(outcome.value, 10.0);
        assert_eq!(outcome.units, 1.25e9);
        let error = r#"{"error":"unable to connect to server"}"#;
        assert!(parse_iperf(error).is_err());
    }

    #[test]
    fn wrk_units() {
        assert_eq!(parse_duration_ms("1.02s"), Some(1020.0));
        assert_eq!(parse_duration_ms("4.30ms"), Some(4.3));
        assert_eq!(parse_duration_ms("fast"), None);
    }
}
