//! The `mesh-control` configuration: command-line flags, parsed once and validated; errors
//! name the flag and value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mesh_core::{authz::PathNormalization, telemetry::LogOptions};

use crate::ca::CaSource;
use crate::registry::RegistryConfig;

/// Weft control service: reads mesh config (from a local directory or Kubernetes), runs the
/// mesh certificate authority, and streams workloads, services, policy and routes to node
/// tunnels and waypoints over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "mesh-control", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Service settings (for `serve`).
    #[command(flatten)]
    pub config: Config,
    /// Logging.
    #[command(flatten)]
    pub log: LogOptions,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the control service (the default).
    Serve,
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crds {
        /// Directory to write `<plural>.<group>.yaml` files into.
        #[arg(long, default_value = "deploy/crds")]
        out_dir: PathBuf,
        /// Do not write; fail if the files differ from what would be written.
        #[arg(long)]
        check: bool,
    },
    /// Write the feed a node or waypoint would receive for `--config-dir`, as a file (YAML in
    /// the proto3 JSON mapping) that `mesh-node --mesh-file` and `mesh-waypoint --feed-file`
    /// apply as they apply a version from mesh-control. Diagnostics go to stderr.
    Dump {
        /// The node feed (every node receives the same one).
        #[arg(
            long,
            value_name = "NODE",
            required_unless_present = "waypoint",
            conflicts_with = "waypoint"
        )]
        node: Option<String>,
        /// The feed of waypoint or ingress gateway `namespace/name`.
        #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_service_account)]
        waypoint: Option<(String, String)>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Settings of the control service.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Local mode (default): directory of Kubernetes manifests (multi-document YAML), reloaded
    /// on change.
    #[arg(
        long,
        global = true,
        default_value = "/etc/weft/config",
        conflicts_with = "kubernetes"
    )]
    pub config_dir: PathBuf,
    /// Read config from the Kubernetes API (in-cluster or KUBECONFIG) instead of a directory.
    #[arg(long, global = true)]
    pub kubernetes: bool,
    /// gRPC listen address (node feed, waypoint feed, CA). TLS with a certificate from the mesh
    /// CA for `--service-account`'s SPIFFE identity, unless `--grpc-plaintext`.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub grpc_listen: SocketAddr,
    /// Serve gRPC without TLS: bearer tokens and config then cross the network unencrypted.
    /// For labs on one host only.
    #[arg(long)]
    pub grpc_plaintext: bool,
    /// mesh-control's own service account (`namespace/name`): its gRPC certificate carries
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<name>`, which nodes and waypoints expect.
    #[arg(long, env = "WEFT_CONTROL_SERVICE_ACCOUNT", default_value = "weft-system/mesh-control", value_parser = parse_service_account)]
    pub service_account: (String, String),
    /// HTTP listen address for `/healthz/ready` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub http_listen: SocketAddr,
    /// File of `<node-name> <token>` lines: the bootstrap tokens nodes authenticate with
    /// (unused with `--node-service-account`).
    #[arg(long, default_value = "/etc/weft/bootstrap-tokens")]
    pub bootstrap_tokens: PathBuf,
    /// Kubernetes mode: authenticate callers with a TokenReview of their pod's projected
    /// service-account token. This service account (`namespace/name`, e.g.
    /// `weft-system/mesh-node`) is a node tunnel, named by the node its token is bound to; any
    /// other pod-bound token is a workload caller (a waypoint or ingress gateway pod: only its
    /// own identity and its own waypoint feed). Without this flag, bootstrap tokens are used.
    /// Needs RBAC `create` on `tokenreviews`.
    #[arg(long, requires = "kubernetes", value_parser = parse_service_account)]
    pub node_service_account: Option<(String, String)>,
    /// Audience the projected tokens of nodes and waypoints must be issued for (their
    /// `serviceAccountToken.audience`).
    #[arg(long, default_value = "weft-control")]
    pub token_audience: String,
    /// SPIFFE trust domain.
    #[arg(long, global = true, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Namespace whose unselected policies apply mesh-wide.
    #[arg(long, global = true, default_value = "istio-system")]
    pub root_namespace: String,
    /// DNS suffix of services.
    #[arg(long, global = true, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// How waypoints normalize request paths before routing and policy, as Istio's mesh-wide
    /// `pathNormalization`: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
    #[arg(long, global = true, default_value = "MERGE_SLASHES", value_parser = parse_path_normalization)]
    pub path_normalization: PathNormalization,
    /// Carry connections between pods on the same node over mTLS too. By default the node checks
    /// identity and policy and joins them without encryption, since the bytes never leave its
    /// kernel; a namespace labelled `weft.dev/same-node-encryption=always` keeps mTLS for its
    /// pods whatever this says (docs/same-node.md).
    #[arg(long, global = true, env = "WEFT_ALWAYS_ENCRYPT_SAME_NODE")]
    pub always_encrypt_same_node: bool,
    /// PEM CA chain (signing certificate first, root last); a self-signed root is generated
    /// when absent. Requires `--ca-key`.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// PEM private key of the signing certificate. Requires `--ca-cert`.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Longest (and default) workload certificate lifetime, e.g. `24h`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    /// Also write the trust bundle (PEM) to this file at start-up, atomically: how local-mode
    /// nodes and waypoints get the roots of a self-signed CA.
    #[arg(long)]
    pub trust_bundle_out: Option<PathBuf>,
    /// Kubernetes mode: how often the `weft-ca-root-cert` ConfigMap is re-applied into every
    /// namespace (repairs deleted or edited copies; new namespaces get it at once).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub root_cert_resync: Duration,
    /// How often the config directory is checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Quiet period before a change is applied (batches bursts of edits or watch events).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    /// How long shutdown waits for streams and tasks to finish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A trust domain that cannot form SPIFFE IDs.
    #[error("invalid --trust-domain {0:?}: use lowercase letters, digits, '.', '-', '_'")]
    TrustDomain(String),
    /// A zero duration where it would spin.
    #[error("invalid {flag} {value:?}: must be greater than zero")]
    ZeroDuration {
        /// Flag name.
        flag: &'static str,
        /// Value.
        value: Duration,
    },
}

/// Parses an Istio path normalization name.
fn parse_path_normalization(text: &str) -> Result<PathNormalization, String> {
    PathNormalization::parse(text).ok_or_else(|| {
        format!("expected NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES, got {text:?}")
    })
}

/// Parses `namespace/name`.
fn parse_service_account(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("expected <namespace>/<name>, got {text:?}")),
    }
}

impl Config {
    /// Checks values clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let td = &self.trust_domain;
        let td_ok = !td.is_empty()
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !td_ok {
            return Err(ConfigError::TrustDomain(td.clone()));
        }
        for (flag, value) in [
            ("--cert-ttl", self.cert_ttl),
            ("--poll-interval", self.poll_interval),
            ("--root-cert-resync", self.root_cert_resync),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { flag, value });
            }
        }
        Ok(())
    }

    /// Registry translation settings.
    pub fn registry(&self) -> RegistryConfig {
        RegistryConfig {
            trust_domain: self.trust_domain.clone(),
            root_namespace: self.root_namespace.clone(),
            cluster_domain: self.cluster_domain.clone(),
            path_normalization: self.path_normalization,
            always_encrypt_same_node: self.always_encrypt_same_node,
        }
    }

    /// Where the CA comes from.
    pub fn ca_source(&self) -> CaSource {
        match (&self.ca_cert, &self.ca_key) {
            (Some(cert_chain), Some(key)) => CaSource::Files {
                cert_chain: cert_chain.clone(),
                key: key.clone(),
            },
            _ => CaSource::SelfSigned,
        }
    }

    /// Defaults for tests: loopback on port 0.
    pub fn for_tests(config_dir: PathBuf, bootstrap_tokens: PathBuf) -> Self {
        let mut config = Cli::parse_from(["mesh-control"]).config;
        config.config_dir = config_dir;
        config.bootstrap_tokens = bootstrap_tokens;
        config.grpc_listen = ([127, 0, 0, 1], 0).into();
        config.http_listen = ([127, 0, 0, 1], 0).into();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mesh-control").chain(args.iter().copied()))
    }

    #[test]
    fn flags_are_consistent_in_every_subcommand() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn dump_takes_the_registry_flags_after_the_subcommand() {
        let cli = parse(&[
            "dump",
            "--config-dir",
            "/tmp/m",
            "--trust-domain",
            "td",
            "--node",
            "n1",
        ])
        .expect("dump");
        assert_eq!(cli.config.config_dir, PathBuf::from("/tmp/m"));
        assert_eq!(cli.config.trust_domain, "td");
        assert!(matches!(cli.command, Some(Command::Dump { node: Some(ref n), .. }) if n == "n1"));
        let cli = parse(&["dump", "--waypoint", "app/wp"]).expect("waypoint");
        assert!(matches!(
            cli.command,
            Some(Command::Dump { waypoint: Some((ref ns, ref name)), .. }) if ns == "app" && name == "wp"
        ));
        assert!(parse(&["dump"]).is_err(), "a target is required");
        assert!(parse(&["dump", "--node", "n1", "--waypoint", "app/wp"]).is_err());
        assert!(
            parse(&["dump", "--waypoint", "wp"]).is_err(),
            "namespace/name"
        );
    }

    #[test]
    fn defaults_are_local_mode_with_self_signed_ca() {
        let cli = parse(&[]).expect("defaults");
        assert!(cli.command.is_none());
        assert!(!cli.config.kubernetes);
        assert_eq!(cli.config.config_dir, PathBuf::from("/etc/weft/config"));
        assert_eq!(cli.config.ca_source(), CaSource::SelfSigned);
        assert_eq!(cli.config.cert_ttl, Duration::from_secs(24 * 3600));
        assert!(!cli.config.grpc_plaintext, "grpc is tls unless asked");
        assert_eq!(
            cli.config.service_account,
            ("weft-system".into(), "mesh-control".into())
        );
        cli.config.validate().expect("valid");
        let cli =
            parse(&["--grpc-plaintext", "--service-account", "mesh/control"]).expect("parses");
        assert!(cli.config.grpc_plaintext);
        assert_eq!(
            cli.config.service_account,
            ("mesh".into(), "control".into())
        );
    }

    #[test]
    fn flag_errors_are_reported() {
        assert!(
            parse(&["--kubernetes", "--config-dir", "/x"]).is_err(),
            "modes conflict"
        );
        assert!(parse(&["--ca-cert", "/ca.pem"]).is_err(), "cert needs key");
        assert!(parse(&["--path-normalization", "SOMETIMES"]).is_err());
        let cli = parse(&["--path-normalization", "decode_and_merge_slashes"]).expect("parses");
        assert_eq!(
            cli.config.registry().path_normalization,
            PathNormalization::DecodeAndMergeSlashes
        );
        assert!(
            parse(&["--node-service-account", "weft-system/mesh-node"]).is_err(),
            "token review needs kubernetes mode"
        );
        let err = parse(&["--kubernetes", "--node-service-account", "mesh-node"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("<namespace>/<name>"), "{err}");
        let cli = parse(&[
            "--kubernetes",
            "--node-service-account",
            "weft-system/mesh-node",
        ])
        .expect("parses");
        assert_eq!(
            cli.config.node_service_account,
            Some(("weft-system".into(), "mesh-node".into()))
        );
        assert_eq!(cli.config.token_audience, "weft-control");
        let err = parse(&["--grpc-listen", "nope"]).unwrap_err().to_string();
        assert!(
            err.contains("--grpc-listen") && err.contains("nope"),
            "{err}"
        );
        let cli = parse(&["--trust-domain", "Bad Domain"]).expect("parses");
        let err = cli.config.validate().unwrap_err().to_string();
        assert!(
            err.contains("--trust-domain") && err.contains("Bad Domain"),
            "{err}"
        );
    }

    #[test]
    fn crds_subcommand() {
        let cli = parse(&["crds", "--out-dir", "/tmp/x", "--check"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Crds { check: true, .. })
        ));
    }
}
