//! `mesh-waypoint`: the Weft L7 proxy binary. Parses flags, starts the waypoint, and drains on
//! SIGTERM/SIGINT.
//!
//! Modes, exactly one of:
//! - `--config FILE`: static routes, destinations and policies from YAML, served on the plain
//!   HTTP listener `--listen` (default `0.0.0.0:15008`), endpoints reached over plain TCP.
//! - `--feed-file FILE`: the same, from a saved feed of waypoint `--namespace`/`--name`
//!   (`mesh-control dump --waypoint`), converted as a version from mesh-control would be.
//! - `--control-address URL`: feed mode, a real ambient waypoint. The waypoint fetches its
//!   certificate `spiffe://<--trust-domain>/ns/<--namespace>/sa/<--service-account>` from
//!   mesh-control's CA (CSR, renewed at half-life), follows the `WaypointFeed` of Service
//!   `<--namespace>/<--name>`, accepts HBONE on `--hbone-listen` (default `0.0.0.0:15008`) and
//!   reaches endpoints over HBONE on `<pod IP>:--upstream-hbone-port` (default 15008).
//!   `--token-file` is the bearer token for control (the node's bootstrap token in the lab);
//!   `--trust-bundle-file` holds the PEM roots peers, and mesh-control on an `https://` address
//!   (identity `--control-identity`), are verified with. `--listen` is off unless
//!   given; when given it is the ingress-gateway listener: plain HTTP selected by `Host` against
//!   the feed's routes whose hosts are no bound service (an Istio `Gateway`'s VirtualServices),
//!   never against the mesh virtual hosts. `--tls-listen` (off unless given) is its HTTPS
//!   twin: TLS terminated with the Gateway's certificates from the feed, chosen by SNI.
//!
//! `--otlp-endpoint` (env `OTEL_EXPORTER_OTLP_ENDPOINT`, plain `http://collector:4317`) turns on
//! OTLP/gRPC export of one server span per sampled request (`--otlp-service-name`).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use mesh_core::{
    control::{self, ControlConnection, ControlEndpoint, ControlTls},
    identity::{
        grpc::BearerToken, source::DEFAULT_VALIDITY, CertificateSource, GrpcSource, SpiffeId,
    },
    signal, telemetry,
};
use mesh_waypoint::{
    app::{self, AppConfig, HboneConfig},
    config::WaypointConfig,
    feed::{self, FeedClientConfig, WaypointName},
    identity,
    telemetry::otlp::OtlpConfig,
};

/// Weft waypoint: the optional L7 proxy for services. Routes HTTP/1.1, HTTP/2 and gRPC by
/// Istio-style rules, applies resilience and L7 authorization, and forwards to endpoints.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Static mode: routes, destinations and policies (YAML).
    #[arg(
        long,
        env = "WEFT_WAYPOINT_CONFIG",
        conflicts_with_all = ["control_address", "feed_file"],
        required_unless_present_any = ["control_address", "feed_file"]
    )]
    config: Option<PathBuf>,
    /// Static mode from a saved feed (`mesh-control dump --waypoint <namespace>/<name>`) of
    /// waypoint `--namespace`/`--name`, converted as a version from mesh-control would be.
    #[arg(
        long,
        env = "WEFT_WAYPOINT_FEED_FILE",
        conflicts_with = "control_address"
    )]
    feed_file: Option<PathBuf>,
    /// Feed mode: mesh-control's gRPC address, e.g.
    /// `https://mesh-control.weft-system.svc:15012` (`http://` is plaintext, for labs only).
    #[arg(long, env = "WEFT_CONTROL_ADDRESS")]
    control_address: Option<String>,
    /// The SPIFFE identity mesh-control's certificate must carry (default
    /// `spiffe://<trust domain>/ns/weft-system/sa/mesh-control`).
    #[arg(long, env = "WEFT_CONTROL_IDENTITY")]
    control_identity: Option<SpiffeId>,
    /// Namespace of the waypoint (feed mode).
    #[arg(long, env = "POD_NAMESPACE", required_unless_present = "config")]
    namespace: Option<String>,
    /// Name of the waypoint Service.
    #[arg(long, env = "WEFT_WAYPOINT_NAME", default_value = "waypoint")]
    name: String,
    /// Service account of the waypoint pod (its identity).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    service_account: String,
    /// Trust domain of the mesh.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Bearer token for mesh-control (feed and CA).
    #[arg(long, env = "WEFT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM trust bundle (feed mode): peers and mesh-control are verified with it; re-read for
    /// every connection to mesh-control.
    #[arg(
        long,
        env = "WEFT_TRUST_BUNDLE_FILE",
        required_unless_present_any = ["config", "feed_file"]
    )]
    trust_bundle_file: Option<PathBuf>,
    /// HBONE listen address (feed mode).
    #[arg(
        long,
        default_value = "0.0.0.0:15008",
        env = "WEFT_WAYPOINT_HBONE_LISTEN"
    )]
    hbone_listen: SocketAddr,
    /// Port of the node tunnels' HBONE listener on endpoints (feed mode).
    #[arg(long, default_value_t = mesh_waypoint::upstream::HBONE_PORT)]
    upstream_hbone_port: u16,
    /// Plain HTTP listen address (static mode default `0.0.0.0:15008`; feed mode: the ingress
    /// listener, off unless set).
    #[arg(long, env = "WEFT_WAYPOINT_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTPS ingress listen address (feed mode; off unless set): TLS 1.2/1.3 terminated with
    /// the Gateway's certificates from the feed (Istio `tls.mode: SIMPLE` `credentialName`,
    /// Gateway API `Terminate` `certificateRefs`), chosen by SNI; then the same routes as
    /// `--listen`. A client without SNI, or naming no configured host, fails the handshake.
    #[arg(long, env = "WEFT_WAYPOINT_TLS_LISTEN", conflicts_with = "config")]
    tls_listen: Option<SocketAddr>,
    /// Metrics and readiness address (Istio's 15020).
    #[arg(long, default_value = "0.0.0.0:15020", env = "WEFT_WAYPOINT_METRICS")]
    metrics: SocketAddr,
    /// OTLP/gRPC collector (`http://collector:4317`): export one span per sampled request.
    /// Off unless set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// `service.name` of exported spans (default `<--name>.<--namespace>` in feed mode, else
    /// `mesh-waypoint`).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    otlp_service_name: Option<String>,
    /// Proxies (load balancers) in front of the ingress listeners whose `X-Forwarded-For`
    /// entries are believed when finding the client for `remoteIpBlocks` and `remote.ip` (Istio
    /// `gatewayTopology.numTrustedProxies`). 0: the peer address is the client.
    #[arg(long, default_value_t = 0, env = "WEFT_NUM_TRUSTED_PROXIES")]
    num_trusted_proxies: u32,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    drain_deadline: Duration,
    #[command(flatten)]
    log: telemetry::LogOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any start-up work: an early SIGTERM must drain, not kill.
    let mut signals = signal::ShutdownSignals::install()?;
    telemetry::init(&args.log)?;
    tracing::info!(?args, "mesh-waypoint starting");
    let mut config = match (&args.config, &args.control_address) {
        (Some(path), _) => static_config(&args, path)?,
        (None, _) if args.feed_file.is_some() => saved_feed_config(&args)?,
        (None, Some(control)) => {
            tokio::select! {
                config = feed_config(&args, control) => config?,
                signal = signals.recv() => {
                    tracing::info!(?signal, "shutdown requested before start-up finished");
                    return Ok(());
                }
            }
        }
        (None, None) => anyhow::bail!("one of --config and --control-address is required"),
    };
    config.metrics = Some(args.metrics);
    config.otlp = otlp_config(&args);
    let bound = app::build(config).await.context("starting the waypoint")?;
    let signal = signals.recv().await;
    tracing::info!(?signal, deadline = ?args.drain_deadline, "shutdown requested, draining");
    let outcome = bound.shutdown(args.drain_deadline).await;
    tracing::info!(?outcome, "drained, exiting");
    Ok(())
}

fn static_config(args: &Args, path: &std::path::Path) -> anyhow::Result<AppConfig> {
    Ok(plain_listener_config(args, WaypointConfig::load(path)?))
}

/// Static modes: `waypoint` served on the plain listener (`--listen`, default `0.0.0.0:15008`).
fn plain_listener_config(args: &Args, waypoint: WaypointConfig) -> AppConfig {
    tracing::info!(
        routes = waypoint.routes.len(),
        destinations = waypoint.destinations.len(),
        "static config loaded"
    );
    let listen = args.listen.unwrap_or(([0, 0, 0, 0], 15008).into());
    let mut config = AppConfig::new(listen, waypoint);
    config.trusted_proxy_hops = args.num_trusted_proxies;
    config
}

fn saved_feed_config(args: &Args) -> anyhow::Result<AppConfig> {
    let path = args
        .feed_file
        .as_deref()
        .context("--feed-file is required")?;
    let me = WaypointName {
        namespace: args
            .namespace
            .clone()
            .context("--namespace is required with --feed-file")?,
        name: args.name.clone(),
    };
    let converted = feed::saved::load_static(path, &me)?;
    for problem in &converted.problems {
        tracing::warn!(file = %path.display(), %problem, "saved feed: failed closed");
    }
    Ok(plain_listener_config(args, converted.waypoint))
}

async fn feed_config(args: &Args, control: &str) -> anyhow::Result<AppConfig> {
    let namespace = args
        .namespace
        .as_deref()
        .context("--namespace is required")?;
    let bundle_path = args
        .trust_bundle_file
        .as_ref()
        .context("--trust-bundle-file is required")?;
    let bundle = read(bundle_path)?;
    // Re-read for every request: a projected service-account token rotates.
    let token = args.token_file.clone().map(BearerToken::file);
    let id = SpiffeId::new(&args.trust_domain, namespace, &args.service_account)
        .context("waypoint identity")?;
    let control_identity = match &args.control_identity {
        Some(identity) => identity.clone(),
        None => control::default_identity(&args.trust_domain).context("mesh-control identity")?,
    };
    let tls = ControlTls {
        trust_bundle_file: bundle_path.clone(),
        identity: control_identity,
    };
    let endpoint = ControlEndpoint::new(control, Some(tls)).context("--control-address")?;
    let channel = endpoint.connect_lazy(Duration::from_secs(10));
    let source: Arc<dyn CertificateSource> = Arc::new(GrpcSource::with_token(
        channel,
        token.clone(),
        &bundle,
        DEFAULT_VALIDITY,
    ));
    let cert = identity::first_certificate(&id, source.as_ref()).await?;
    let mut hbone = HboneConfig::new(args.hbone_listen, cert);
    hbone.rotation = Some(source);
    hbone.upstream_port = args.upstream_hbone_port;
    hbone.workload = Some(WaypointName {
        namespace: namespace.to_owned(),
        name: args.name.clone(),
    });
    let mut connection = ControlConnection::new(endpoint);
    connection.token = token;
    let feed = FeedClientConfig::new(connection, namespace, &args.name);
    let mut config = AppConfig::new(([0, 0, 0, 0], 0).into(), WaypointConfig::default());
    config.listen = args.listen;
    config.tls_listen = args.tls_listen;
    config.feed = Some(feed);
    config.hbone = Some(hbone);
    config.trusted_proxy_hops = args.num_trusted_proxies;
    Ok(config)
}

fn otlp_config(args: &Args) -> Option<OtlpConfig> {
    let endpoint = args.otlp_endpoint.as_deref().filter(|e| !e.is_empty())?;
    let service = args.otlp_service_name.clone().unwrap_or_else(|| {
        args.namespace
            .as_deref()
            .filter(|_| args.control_address.is_some())
            .map_or_else(
                || "mesh-waypoint".to_owned(),
                |ns| format!("{}.{ns}", args.name),
            )
    });
    Some(OtlpConfig::new(endpoint, service))
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("mesh-waypoint").chain(args.iter().copied()))
    }

    #[test]
    fn exactly_one_mode_and_feed_flags() {
        Args::command().debug_assert();
        let feed = [
            "--control-address=http://10.0.0.1:15012",
            "--namespace=mesh",
            "--trust-bundle-file=/roots.pem",
        ];
        let args = parse(&feed).expect("feed mode parses");
        assert_eq!(
            (args.name.as_str(), args.service_account.as_str()),
            ("waypoint", "waypoint")
        );
        assert_eq!(args.hbone_listen.port(), 15008);
        assert_eq!(args.upstream_hbone_port, 15008);
        assert!(args.listen.is_none(), "no plain listener unless asked");
        assert!(args.tls_listen.is_none(), "no https listener unless asked");
        let mut with_tls = feed.to_vec();
        with_tls.push("--tls-listen=0.0.0.0:8443");
        let tls = parse(&with_tls).expect("https listener parses");
        assert_eq!(tls.tls_listen.map(|a| a.port()), Some(8443));
        assert!(
            parse(&["--config=/w.yaml", "--tls-listen=0.0.0.0:8443"]).is_err(),
            "certificates come from the feed only"
        );
        assert!(otlp_config(&args).is_none(), "no span export unless asked");
        let mut with_otlp = feed.to_vec();
        with_otlp.push("--otlp-endpoint=http://collector:4317");
        let otlp = otlp_config(&parse(&with_otlp).expect("parses")).expect("export on");
        assert_eq!(
            (otlp.endpoint.as_str(), otlp.service_name.as_str()),
            ("http://collector:4317", "waypoint.mesh")
        );
        assert!(parse(&["--config=/w.yaml"]).is_ok(), "static mode parses");
        let both = [feed[0], feed[1], feed[2], "--config=/w.yaml"];
        assert!(parse(&both).is_err(), "both modes at once");
        assert!(
            parse(&feed[..1]).is_err(),
            "feed mode needs namespace and trust bundle"
        );
    }
}
