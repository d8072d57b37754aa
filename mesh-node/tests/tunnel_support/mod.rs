//! Test support for in-process tunnel tests: a fake "kernel redirect" over loopback, echo pods
//! on 127.0.0.x addresses, a test CA that can also mint expired certificates, and a two-node mesh.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use mesh_core::identity::{
    ca::CertificateAuthority, cert::generate_csr, CertificateSource, InProcessSource, SourceError,
    SpiffeId, WorkloadCert,
};
use mesh_core::proto::{build, control::v1 as pb};
use mesh_node::{
    app::{self, Bound, Deps},
    config::Config,
    feed::{convert, MeshSnapshot},
    policy::Policies,
    socket::SocketFactory,
    state::State,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

/// Policies written as the feed's `Authorization` messages (YAML in the proto3 JSON mapping), as
/// the node converts them; `selects` names, for selector-scoped policies, the workloads
/// (`namespace/name`) mesh-control would have resolved them to.
pub fn policies(yaml: &str, selects: &[(&str, &str)]) -> Policies {
    let wire: Vec<pb::Authorization> = serde_yaml::from_str(yaml).expect("policy yaml");
    let selected = |key: &str| {
        selects
            .iter()
            .filter(|(policy, _)| *policy == key)
            .map(|(_, workload)| workload.to_string())
            .collect()
    };
    let mut warnings = Vec::new();
    let policies = Policies::from_feed(&wire, selected, &mut warnings);
    assert!(warnings.is_empty(), "{warnings:?}");
    policies
}

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Listener addresses of one fake node.
#[derive(Debug, Clone, Copy)]
pub struct NodeAddrs {
    pub outbound: SocketAddr,
    pub plaintext: SocketAddr,
    pub hbone: SocketAddr,
}

/// Emulates what iptables/eBPF redirection does: sends a pod's connections to its node's
/// tunnel and remembers each connection's original destination.
#[derive(Debug, Default)]
pub struct FakeNet {
    original: Mutex<HashMap<SocketAddr, SocketAddr>>,
    nodes: Mutex<HashMap<String, NodeAddrs>>,
    pods: Mutex<HashMap<IpAddr, String>>,
}

impl FakeNet {
    pub fn add_pod(&self, ip: IpAddr, node: &str) {
        self.pods.lock().unwrap().insert(ip, node.to_owned());
    }

    pub fn add_node(&self, node: &str, bound: &Bound) {
        let addrs = NodeAddrs {
            outbound: bound.outbound,
            plaintext: bound.inbound_plaintext,
            hbone: bound.hbone,
        };
        self.nodes.lock().unwrap().insert(node.to_owned(), addrs);
    }

    fn node_of(&self, ip: IpAddr) -> Option<NodeAddrs> {
        let node = self.pods.lock().unwrap().get(&ip).cloned()?;
        self.nodes.lock().unwrap().get(&node).copied()
    }

    /// Connects from `src` to `via`, recording `original` as the original destination.
    async fn redirected(
        &self,
        src: IpAddr,
        via: SocketAddr,
        original: SocketAddr,
    ) -> io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(src, 0))?;
        let local = socket.local_addr()?;
        self.original.lock().unwrap().insert(local, original);
        socket.connect(via).await
    }

    /// A pod at `src` connects to `dst`: captured to its node's outbound listener.
    pub async fn app_connect(&self, src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
        let node = self.node_of(src).expect("source pod on a known node");
        self.redirected(src, node.outbound, dst).await
    }

    /// A non-mesh client at `src` sends plaintext to pod `dst`: captured to 15006.
    pub async fn plaintext_connect(&self, src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
        let node = self
            .node_of(dst.ip())
            .expect("destination pod on a known node");
        self.redirected(src, node.plaintext, dst).await
    }
}

/// The socket factory of one node on the fake network.
#[derive(Debug, Clone)]
pub struct NodeSockets(pub Arc<FakeNet>);

impl SocketFactory for NodeSockets {
    fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        TcpListener::from_std(std_listener)
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> {
        let net = self.0.clone();
        Box::pin(async move {
            match net.node_of(addr.ip()) {
                // `<pod ip>:15008` is captured by the destination node's HBONE listener.
                Some(node) if addr.port() == 15008 => {
                    net.redirected("127.0.0.1".parse().unwrap(), node.hbone, addr)
                        .await
                }
                _ => {
                    // Like the real factory: no Nagle delay on proxied connections.
                    let stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    Ok(stream)
                }
            }
        })
    }

    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        let peer = stream.peer_addr()?;
        match self.0.original.lock().unwrap().get(&peer) {
            Some(original) => Ok(*original),
            None => stream.local_addr(),
        }
    }
}

/// An echo "pod" on `ip`; returns its address. Echoes until EOF, then half-closes.
pub async fn echo_pod(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    spawn_echo(listener);
    addr
}

/// Writes `payload` and expects it echoed back.
pub async fn round_trip<S>(stream: &mut S, payload: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(payload).await?;
    let mut back = vec![0; payload.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "echo timed out"))??;
    if back != payload {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo mismatch"));
    }
    Ok(())
}

/// Expects the tunnel to close the connection without echoing (refused somewhere on the path).
pub async fn expect_closed(stream: &mut TcpStream) {
    let _ = stream.write_all(b"ping").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("connection left open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection was not refused: {read:?}"
    );
}

/// A root whose key the test holds, so it can mint certificates the CA would refuse to.
pub struct TestCa {
    root_key: KeyPair,
    root_params: CertificateParams,
    pub ca: Arc<CertificateAuthority>,
}

impl TestCa {
    pub fn new() -> Self {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut root_params = CertificateParams::default();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let root = root_params.self_signed(&root_key).unwrap();
        let ca = CertificateAuthority::from_pem(&root.pem(), &root_key.serialize_pem()).unwrap();
        Self {
            root_key,
            root_params,
            ca: Arc::new(ca),
        }
    }

    pub fn source(&self) -> Arc<InProcessSource> {
        Arc::new(InProcessSource::new(
            self.ca.clone(),
            Duration::from_secs(24 * 3600),
        ))
    }

    /// A certificate for `identity` that expired an hour ago.
    pub fn expired(&self, identity: &SpiffeId) -> WorkloadCert {
        let csr = generate_csr(identity).unwrap();
        let key = KeyPair::from_pem(&csr.key_pem).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(7200);
        params.not_after = now - Duration::from_secs(3600);
        let issuer = Issuer::from_params(&self.root_params, &self.root_key);
        let leaf = params.signed_by(&key, &issuer).unwrap();
        let chain = vec![leaf.pem()];
        WorkloadCert::from_pem(&chain, &csr.key_pem, &self.ca.trust_bundle_pem()).unwrap()
    }
}

/// Hands out expired certificates only.
pub struct ExpiredSource(pub Arc<TestCa>);

impl CertificateSource for ExpiredSource {
    fn fetch(&self, identity: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, SourceError>> {
        let cert = self.0.expired(identity);
        Box::pin(async move { Ok(cert) })
    }
}

/// The two-node mesh used by most tests.
pub struct Mesh {
    pub net: Arc<FakeNet>,
    pub a: Bound,
    pub b: Bound,
    /// Client pod on node a (ns web, sa frontend).
    pub client_ip: IpAddr,
    /// Echo pod on node b (ns data, sa db, app=db).
    pub db: SocketAddr,
    /// Second echo pod on node b (ns data, sa cache, app=cache).
    pub cache: SocketAddr,
    /// Service VIP (port 80) in front of `db`.
    pub vip: SocketAddr,
    pub ca: Arc<TestCa>,
}

/// A change to the mesh both nodes are fed.
pub type MeshEdit = Box<dyn FnOnce(&mut MeshSnapshot) + Send>;

pub struct MeshOptions {
    /// Applied to the default mesh before both nodes start (see [`Mesh::snapshot`]).
    pub edit: Option<MeshEdit>,
    /// Node b's authorization policies (see [`policies`]).
    pub node_b_policies: Policies,
    pub node_a_trust_domain: &'static str,
    pub node_a_source: Option<Arc<dyn CertificateSource>>,
    /// Node b's certificate source (the test CA's when absent).
    pub node_b_source: Option<Arc<dyn CertificateSource>>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            edit: None,
            node_b_policies: Policies::default(),
            node_a_trust_domain: "cluster.local",
            node_a_source: None,
            node_b_source: None,
        }
    }
}

/// Settings of a test node: every listener on an ephemeral loopback port.
pub fn node_settings(node: &str, trust_domain: &str) -> Config {
    let yaml = format!(
        r#"
node_name: {node}
trust_domain: {trust_domain}
drain_deadline: 5s
listeners:
  outbound: 127.0.0.1:0
  inbound_plaintext: 127.0.0.1:0
  hbone: 127.0.0.1:0
  metrics: 127.0.0.1:0
  readiness: 127.0.0.1:0
  admin: 127.0.0.1:0
"#
    );
    Config::from_yaml(&yaml).expect("node settings")
}

/// A pod in the mesh, as mesh-control would feed it.
pub fn pod(
    namespace: &str,
    name: &str,
    service_account: &str,
    ip: &str,
    node: &str,
) -> pb::Workload {
    build::workload(
        namespace,
        name,
        service_account,
        ip.parse().expect("pod ip"),
        node,
    )
}

/// The default mesh: the client (web/frontend-0) on node a; db-0 and cache-0 (ns data) on
/// node b; service data/db on 10.96.0.1:80 in front of db.
fn default_snapshot(db: SocketAddr, cache: SocketAddr) -> MeshSnapshot {
    let client = pod("web", "frontend-0", "frontend", "127.0.0.10", "node-a");
    let mut db_pod = pod("data", "db-0", "db", &db.ip().to_string(), "node-b");
    db_pod.labels = [("app".to_owned(), "db".to_owned())].into();
    let mut cache_pod = pod(
        "data",
        "cache-0",
        "cache",
        &cache.ip().to_string(),
        "node-b",
    );
    cache_pod.labels = [("app".to_owned(), "cache".to_owned())].into();
    let vip = "10.96.0.1".parse().expect("vip");
    let service = build::service("data", "db", vip, &[(80, db.port())], &[&db_pod]);
    MeshSnapshot::of([client, db_pod, cache_pod], [service])
}

/// `node`'s view of `snapshot` (trust domain `cluster.local`), as the feed would give it.
pub fn state_for(node: &str, snapshot: &MeshSnapshot) -> State {
    let mesh = convert::mesh(&node_settings(node, "cluster.local"), snapshot);
    assert!(mesh.warnings.is_empty(), "{:?}", mesh.warnings);
    mesh.state
}

impl Mesh {
    pub async fn start(options: MeshOptions) -> Self {
        Self::start_with_ca(options, Arc::new(TestCa::new())).await
    }

    pub async fn start_with_ca(options: MeshOptions, ca: Arc<TestCa>) -> Self {
        let net = Arc::new(FakeNet::default());
        let db = echo_pod("127.0.0.20").await;
        let cache = echo_pod("127.0.0.21").await;
        let client_ip: IpAddr = "127.0.0.10".parse().unwrap();
        net.add_pod(client_ip, "node-a");
        net.add_pod(db.ip(), "node-b");
        net.add_pod(cache.ip(), "node-b");
        let sockets = Arc::new(NodeSockets(net.clone()));
        let mut snapshot = default_snapshot(db, cache);
        if let Some(edit) = options.edit {
            edit(&mut snapshot);
        }
        let b_settings = node_settings("node-b", "cluster.local");
        let b = app::build_with(
            b_settings.clone(),
            convert::mesh(&b_settings, &snapshot).state,
            options.node_b_policies,
            Deps {
                sockets: sockets.clone(),
                certs: options.node_b_source.unwrap_or_else(|| ca.source()),
            },
        )
        .await
        .unwrap();
        net.add_node("node-b", &b);
        let a_settings = node_settings("node-a", options.node_a_trust_domain);
        let a_certs = options.node_a_source.unwrap_or_else(|| ca.source());
        let a = app::build_with(
            a_settings.clone(),
            convert::mesh(&a_settings, &snapshot).state,
            Policies::default(),
            Deps {
                sockets,
                certs: a_certs,
            },
        )
        .await
        .unwrap();
        net.add_node("node-a", &a);
        Self {
            net,
            a,
            b,
            client_ip,
            db,
            cache,
            vip: "10.96.0.1:80".parse().unwrap(),
            ca,
        }
    }

    /// The default mesh the nodes started from (before any [`MeshOptions::edit`]).
    pub fn snapshot(&self) -> MeshSnapshot {
        default_snapshot(self.db, self.cache)
    }

    /// `node`'s view of the default mesh after `edit`.
    pub fn state(&self, node: &str, edit: impl FnOnce(&mut MeshSnapshot)) -> State {
        let mut snapshot = self.snapshot();
        edit(&mut snapshot);
        state_for(node, &snapshot)
    }

    /// The client pod connects to `dst`.
    pub async fn connect(&self, dst: SocketAddr) -> TcpStream {
        tokio::time::timeout(WAIT, self.net.app_connect(self.client_ip, dst))
            .await
            .expect("connect hung")
            .expect("capture connect failed")
    }
}

/// Fetches `path` from an ops listener with a minimal HTTP/1.0 request.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("ops request hung")
        .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// Collects formatted log lines (access events) from a process-wide subscriber.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs the process-wide subscriber (`access=info`): one test per binary may call it,
    /// so no other test's threads race on callsite interest.
    pub fn install_global() -> Self {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_env_filter("access=info")
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The access log lines so far.
    pub fn access_lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("connection complete"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until an access line contains every one of `parts`; returns it.
    pub async fn wait_for_line(&self, parts: &[&str]) -> String {
        let found = async {
            loop {
                let lines = self.access_lines();
                if let Some(line) = lines.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                    return line.clone();
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(WAIT, found)
            .await
            .unwrap_or_else(|_| panic!("no access line with {parts:?}: {}", self.text()))
    }
}

/// A client workload's side of HBONE, dialling `<pod ip>:15008` directly (what a remote node
/// tunnel does), presenting `spiffe://cluster.local/ns/web/sa/client`.
pub struct HboneCaller {
    client: mesh_core::hbone::Client,
    cert: Arc<mesh_core::tls::IdentityCert>,
}

impl HboneCaller {
    pub async fn new(ca: &TestCa) -> anyhow::Result<Self> {
        Self::with_dialer(ca, Arc::new(mesh_core::hbone::TcpDialer)).await
    }

    /// A caller whose connections come from `source` (an address of this host).
    pub async fn from_source(ca: &TestCa, source: IpAddr) -> anyhow::Result<Self> {
        Self::with_dialer(ca, Arc::new(SourceDialer(source))).await
    }

    async fn with_dialer(
        ca: &TestCa,
        dialer: Arc<dyn mesh_core::hbone::Dialer>,
    ) -> anyhow::Result<Self> {
        let id: SpiffeId = "spiffe://cluster.local/ns/web/sa/client".parse()?;
        let cert = mesh_core::tls::IdentityCert::new(&ca.source().fetch(&id).await?)?;
        let client = mesh_core::hbone::Client::new(dialer);
        Ok(Self { client, cert })
    }

    /// Dials `<pod>:15008` for `<pod>:port`, expecting the pod to be `apps/app`.
    pub async fn call(&self, pod: IpAddr, port: u16) -> anyhow::Result<mesh_core::hbone::Tunnel> {
        self.call_as(pod, SocketAddr::new(pod, port)).await
    }

    /// Dials `<pod>:15008` asking for `authority`.
    pub async fn call_as(
        &self,
        pod: IpAddr,
        authority: SocketAddr,
    ) -> anyhow::Result<mesh_core::hbone::Tunnel> {
        let request = mesh_core::hbone::OutboundRequest {
            source: self.cert.clone(),
            destination_identities: vec!["spiffe://cluster.local/ns/apps/sa/app".parse()?],
            dial: SocketAddr::new(pod, 15008),
            authority: authority.to_string().parse()?,
            headers: Default::default(),
            origin: None,
        };
        Ok(tokio::time::timeout(WAIT, self.client.connect(request)).await??)
    }
}

/// Dials from a fixed local address.
struct SourceDialer(IpAddr);

impl mesh_core::hbone::Dialer for SourceDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> {
        let source = self.0;
        Box::pin(async move {
            let socket = match source {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(addr).await
        })
    }
}

/// Echoes every connection accepted on `listener` (a pod's server) until EOF.
pub fn spawn_echo(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}
