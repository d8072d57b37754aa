//! The node tunnel's own settings (YAML), parsed once at start-up: its name, listeners, CA,
//! in-pod listeners and drain deadline.
//!
//! The mesh itself (workloads, services, waypoints, peer authentication and policies) is not
//! described here: it comes from mesh-control's feed, or from a saved feed
//! (`mesh-control dump --node`, then `mesh-node --mesh-file`), through one conversion
//! ([`crate::feed::convert`]).

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Errors reading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the schema (the message names the key).
    #[error("parsing config: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// Values that parse but cannot work together.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Top-level node tunnel configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's Kubernetes name; workloads with `node` equal to it are local.
    pub node_name: String,
    /// SPIFFE trust domain of the mesh.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Port remote node tunnels accept HBONE on (dialled as `<pod ip>:<hbone_port>`).
    #[serde(default = "default_hbone_port")]
    pub hbone_port: u16,
    /// Listener addresses.
    #[serde(default)]
    pub listeners: Listeners,
    /// How long in-flight connections may take to finish on shutdown.
    #[serde(
        default = "default_drain",
        serialize_with = "durations::serialize",
        deserialize_with = "durations::drain_deadline"
    )]
    pub drain_deadline: Duration,
    /// Certificate authority used in static mode.
    #[serde(default)]
    pub ca: CaConfig,
    /// HBONE listeners inside local pods' network namespaces.
    #[serde(default)]
    pub in_pod: InPodConfig,
    /// Where pods' network namespaces are found.
    #[serde(default)]
    pub pod_netns: PodNetnsConfig,
    /// Carry connections between pods on this node over HBONE (mTLS) even when their
    /// workloads allow the same-node path (`same_node_plaintext`).
    #[serde(default)]
    pub always_encrypt_same_node: bool,
    /// Set by the binary (not the file) when it follows mesh-control: readiness then waits
    /// for the first applied feed version.
    #[serde(skip)]
    pub follows_control_feed: bool,
}

/// In-pod listeners (Istio ambient's "in-pod" model): for every local pod whose network
/// namespace is found, the tunnel listens on `<hbone_port>` (HBONE) and `plaintext_port`
/// (everything else) inside that namespace, so peers reach `<pod ip>:15008` without any NAT
/// towards the node; with eBPF redirection, `sk_lookup` steers every inbound TCP connection to
/// the pod to one of the two. The tunnel connects to the app from inside the pod, with the
/// client's address (see [`crate::pod_net`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InPodConfig {
    /// Open in-pod listeners (needs `CAP_SYS_ADMIN` to enter pod namespaces).
    pub enabled: bool,
    /// `SO_MARK` of the in-pod listeners (needs `CAP_NET_ADMIN`; default 0x539, the mark Istio's
    /// ztunnel uses in pods). It is the eBPF programs' tunnel mark: a STRICT pod admits
    /// connection attempts on the HBONE port only into listening sockets carrying it, so an
    /// application's own listener on that port stays protected, and connects of sockets
    /// carrying it are never redirected. Pick a value no CNI in the pods uses; 0 leaves the
    /// listeners unmarked, and then STRICT pods accept no HBONE at all (fail closed).
    pub mark: u32,
    /// Port of the in-pod plaintext listener (Istio's 15006). Its only way in is `sk_lookup`.
    pub plaintext_port: u16,
    /// `SO_MARK` of the tunnel's connections to apps, and of the apps' answers (the return
    /// path's policy rule, table [`crate::pod_net::REPLY_TABLE`], matches it). Must differ from
    /// `mark`, whose sockets answer clients outside the pod; 0 disables client address
    /// preservation (apps then see the pod's own address).
    pub reply_mark: u32,
}

/// Istio's inbound plaintext port.
pub const DEFAULT_IN_POD_PLAINTEXT_PORT: u16 = 15006;

/// Mark of the tunnel's transparent connections to apps (and the apps' answers).
pub const DEFAULT_REPLY_MARK: u32 = 0x53a;

/// Istio ztunnel's in-pod socket mark (1337).
pub const DEFAULT_IN_POD_MARK: u32 = 0x539;

impl Default for InPodConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mark: DEFAULT_IN_POD_MARK,
            plaintext_port: DEFAULT_IN_POD_PLAINTEXT_PORT,
            reply_mark: DEFAULT_REPLY_MARK,
        }
    }
}

/// Where pods' network namespaces are found (for eBPF enrollment and in-pod listeners).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodNetnsConfig {
    /// Directories of pinned namespace files (`/run/netns` for containerd, CRI-O, `ip netns`).
    pub dirs: Vec<PathBuf>,
    /// Also search `/proc/<pid>/ns/net` (needs the host PID namespace).
    pub scan_proc: bool,
}

impl Default for PodNetnsConfig {
    fn default() -> Self {
        Self {
            dirs: vec![PathBuf::from("/run/netns")],
            scan_proc: false,
        }
    }
}

/// Listener addresses (Istio ambient ports by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// Captured outbound traffic (15001).
    pub outbound: SocketAddr,
    /// A second outbound listener on this IPv6 address, on the port `outbound` got (the eBPF
    /// programs send both families to one port). Set by `--node-ipv6`; `None`: IPv4 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_ipv6: Option<Ipv6Addr>,
    /// Captured inbound plaintext (15006).
    pub inbound_plaintext: SocketAddr,
    /// Inbound HBONE (15008).
    pub hbone: SocketAddr,
    /// Prometheus metrics (15020).
    pub metrics: SocketAddr,
    /// Readiness probe (15021).
    pub readiness: SocketAddr,
    /// Admin, localhost only (15000).
    pub admin: SocketAddr,
}

impl Default for Listeners {
    fn default() -> Self {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Self {
            outbound: any(15001),
            outbound_ipv6: None,
            inbound_plaintext: any(15006),
            hbone: any(15008),
            metrics: any(15020),
            readiness: any(15021),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
        }
    }
}

/// Where certificates come from: the control plane's CA service when `address` is set,
/// otherwise an in-process CA (plugged-in files, or self-signed for a single node).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// gRPC address of the mesh CA service (e.g. `https://mesh-control.weft-system.svc:15012`;
    /// `http://` is plaintext, for labs only).
    pub address: Option<String>,
    /// File holding the bearer token sent to mesh-control (CA and node feed).
    pub token_file: Option<PathBuf>,
    /// PEM roots peers, and mesh-control over `https://`, are verified with (required with
    /// `address`). Re-read for every connection to mesh-control.
    pub trust_bundle_file: Option<PathBuf>,
    /// SPIFFE identity mesh-control's certificate must carry (default
    /// `spiffe://<trust_domain>/ns/weft-system/sa/mesh-control`).
    pub control_identity: Option<String>,
    /// PEM chain of a plugged-in CA (signing cert first, root last). Self-signed when absent.
    pub cert_chain_file: Option<PathBuf>,
    /// PEM key of the plugged-in CA.
    pub key_file: Option<PathBuf>,
    /// Workload certificate lifetime (default 24h).
    #[serde(
        default,
        serialize_with = "durations::serialize_opt",
        deserialize_with = "durations::workload_validity"
    )]
    pub workload_validity: Option<Duration>,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_hbone_port() -> u16 {
    15008
}
fn default_drain() -> Duration {
    Duration::from_secs(5)
}

/// Keys older config files had whose content now comes from the feed (or a saved feed).
const RETIRED_KEYS: &[&str] = &[
    "authorization_policies",
    "root_namespace",
    "peer_authentication",
    "workloads",
    "services",
    "waypoints",
];

impl Config {
    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        if let Ok(serde_yaml::Value::Mapping(top)) = serde_yaml::from_str(text) {
            for key in RETIRED_KEYS {
                if top.contains_key(*key) {
                    return Err(ConfigError::Invalid(format!(
                        "`{key}` is no longer read from the node's config file: the mesh \
                         (workloads, services, waypoints, peer authentication, policies) comes \
                         from mesh-control, or from a saved feed (`mesh-control dump --node \
                         <name>`, then `mesh-node --mesh-file`)"
                    )));
                }
            }
        }
        let config: Self = serde_yaml::from_str(text)?;
        let in_pod = &config.in_pod;
        if in_pod.reply_mark != 0 && in_pod.reply_mark == in_pod.mark {
            return Err(ConfigError::Invalid(format!(
                "in_pod.reply_mark and in_pod.mark are both {:#x}: the return-path rule would \
                 send the in-pod listeners' answers to remote clients back into the pod",
                in_pod.mark
            )));
        }
        Ok(config)
    }

    /// Reads and parses a YAML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }
}

/// Durations as humantime strings ("5s", "24h"); errors name the key and the value.
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    fn parse<E: serde::de::Error>(key: &str, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text)
            .map_err(|e| E::custom(format!("{key}: invalid duration {text:?} ({e})")))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn serialize_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn drain_deadline<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse("drain_deadline", &String::deserialize(d)?)
    }

    pub fn workload_validity<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| parse("ca.workload_validity", &text))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
node_name: node-a
drain_deadline: 3s
in_pod: { enabled: false }
"#;

    #[test]
    fn parses_example_with_defaults() {
        let config = Config::from_yaml(EXAMPLE).unwrap();
        assert_eq!(config.trust_domain, "cluster.local");
        assert_eq!(config.hbone_port, 15008);
        assert_eq!(config.drain_deadline, Duration::from_secs(3));
        assert_eq!(config.listeners.outbound.port(), 15001);
        assert!(!config.in_pod.enabled);
        assert_eq!(
            config.in_pod.mark, DEFAULT_IN_POD_MARK,
            "defaults fill the rest"
        );
        assert_eq!(config.pod_netns.dirs, vec![PathBuf::from("/run/netns")]);
    }

    #[test]
    fn shipped_example_is_valid() {
        let config = Config::from_yaml(include_str!("../config/example.yaml")).unwrap();
        assert_eq!(
            config.ca.workload_validity,
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(config.in_pod.mark, DEFAULT_IN_POD_MARK);
        let same = "node_name: n1\nin_pod: { mark: 0x600, reply_mark: 0x600 }\n";
        let error = Config::from_yaml(same).unwrap_err().to_string();
        assert!(error.contains("in_pod.reply_mark"), "{error}");
        assert_eq!(config.listeners.outbound_ipv6, None);
    }

    #[test]
    fn retired_mesh_keys_say_where_the_mesh_comes_from() {
        for key in RETIRED_KEYS {
            let text = format!("node_name: a\n{key}: []\n");
            let err = Config::from_yaml(&text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("--mesh-file"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::from_yaml("node_name: a\nnode_nmae: b\n").unwrap_err();
        assert!(err.to_string().contains("node_nmae"), "{err}");
        let err = Config::from_yaml("node_name: a\ndrain_deadline: soon\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("drain_deadline") && text.contains("\"soon\""),
            "{text}"
        );
    }
}
