//! End to end on the real kernel (root): two lab nodes, mesh-control as config source and CA,
//! mesh-node with eBPF redirection on each node, and the sample app. Traffic between pods goes
//! through the mesh with mTLS identities; policy from the example's AuthorizationPolicy and
//! STRICT mode are enforced; the mesh survives a control-plane restart and a node restart.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use weft_tests::{
    bins,
    lab::{cgroup::cgroup2_mount, netns::list_with_prefix},
    mesh::{MeshLab, MeshLabOptions, BACKEND_VIP, WEBSITE_VIP},
    wait::wait_until,
};

/// A file that is not valid YAML, and a Service whose cluster IP is not an address.
const BROKEN_CONFIG: &str = "apiVersion: v1
kind: Service
metadata: {name: nonsense, namespace: demo}
spec: {clusterIP: not-an-ip, ports: [{port: 80}]}
---
this: is: not: yaml: [
";

/// A policy with an action Istio does not have.
const BROKEN_POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: demo}
spec:
  action: MAYBE
  rules: [{}]
";

/// How many answers of a `--summary` tally came from `website <version>` with status 200.
fn answers_from(tally: &str, version: &str) -> u32 {
    let needle = format!("200 website {version} ");
    tally
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| line.trim().split(' ').next()?.parse::<u32>().ok())
        .sum()
}

/// Makes `backend` PERMISSIVE and lets the intruder's address in by `ipBlocks`.
fn permissive_backend(intruder: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: backend-permissive, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  mtls: {{mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend-intruder, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  action: ALLOW
  rules:
    - from: [{{source: {{ipBlocks: [\"{intruder}/32\"]}}}}]
"
    )
}

const JWT_ISSUER: &str = "https://issuer.weft.test";

/// A signing key made for this run and its JWKS, so no key is ever committed.
struct TokenIssuer {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

impl TokenIssuer {
    fn new() -> Self {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let point = pair.public_key_raw();
        let (x, y) = point[1..].split_at(32);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "lab", "alg": "ES256",
            "x": b64.encode(x), "y": b64.encode(y),
        }]});
        Self {
            key,
            jwks: jwks.to_string(),
        }
    }

    /// A token for `sub` from `issuer`, expiring `expires_in` seconds from now (negative: in the
    /// past).
    fn token(&self, issuer: &str, expires_in: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({
            "iss": issuer, "sub": "lab-user", "aud": "website", "exp": now + expires_in,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("lab".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }

    /// A RequestAuthentication on `website` and a DENY on `/secure` for requests without a
    /// verified token, as Istio's documentation pairs them.
    fn policy(&self) -> String {
        let jwks = serde_json::to_string(&self.jwks).unwrap();
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: website-jwt, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: website}}]
  jwtRules:
    - issuer: {JWT_ISSUER}
      audiences: [website]
      jwks: {jwks}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: website-secure-needs-jwt, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: website}}]
  action: DENY
  rules:
    - from: [{{source: {{notRequestPrincipals: [\"*\"]}}}}]
      to: [{{operation: {{paths: [\"/secure\", \"/secure/*\"]}}}}]
"
        )
    }
}

/// `website`'s waypoint verifies JWTs (RequestAuthentication) and policy reads the principal:
/// valid passes, expired and foreign-issuer tokens get 401, no token is denied on `/secure`.
fn waypoint_verifies_jwts(mesh: &MeshLab) {
    let issuer = TokenIssuer::new();
    let file = mesh.config_dir().join("95-website-jwt.yaml");
    std::fs::write(&file, issuer.policy()).unwrap();
    let get = |path: &str, token: Option<&str>| {
        let header = token.map(|t| format!("authorization: Bearer {t}"));
        let mut args = vec!["--path", path, "--timeout-ms", "3000"];
        if let Some(header) = &header {
            args.extend(["--header", header.as_str()]);
        }
        mesh.get("client", WEBSITE_VIP, &args).unwrap_or_default()
    };
    let applied = wait_until(Duration::from_secs(20), || {
        get("/secure", None).starts_with("403")
    });
    assert!(
        applied,
        "no token on /secure was not denied: {}",
        get("/secure", None)
    );
    let valid = issuer.token(JWT_ISSUER, 600);
    let cases = [
        ("/secure", Some(valid.as_str()), "200"),
        ("/secure", Some(&issuer.token(JWT_ISSUER, -3600)), "401"),
        (
            "/secure",
            Some(&issuer.token("https://elsewhere.test", 600)),
            "401",
        ),
        ("/secure", Some("not-a-token"), "401"),
        ("/secure", None, "403"),
        ("//secure/../secure/", None, "403"),
        ("/public", None, "200"),
        ("/public", Some(&issuer.token(JWT_ISSUER, -3600)), "401"),
    ];
    for (path, token, status) in cases {
        let answer = get(path, token);
        assert!(
            answer.starts_with(status),
            "{path} with {:?}: expected {status}, got {answer}",
            token.map(|t| &t[..t.len().min(24)])
        );
    }
    std::fs::remove_file(&file).unwrap();
    let removed = wait_until(Duration::from_secs(20), || {
        get("/secure", None).starts_with("200")
    });
    assert!(removed, "the JWT policy outlived its file");
}

/// Denies the intruder's address at `backend`.
fn deny_intruder(intruder: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend-deny-intruder, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  action: DENY
  rules:
    - from: [{{source: {{ipBlocks: [\"{intruder}/32\"]}}}}]
"
    )
}

/// Plaintext from outside the mesh into a PERMISSIVE pod goes through the destination tunnel,
/// which applies L4 policy with the caller's real address; the app sees that address.
fn permissive_plaintext_passes_the_tunnels_policy(mesh: &MeshLab) {
    let intruder = mesh.pod_ip("intruder").unwrap();
    let backend_direct = format!("{}:8080", mesh.pod_ip("backend").unwrap());
    let get = || {
        mesh.get(
            "intruder",
            &backend_direct,
            &["--body", "--timeout-ms", "2000"],
        )
        .unwrap_or_default()
    };
    let allow = mesh.config_dir().join("96-permissive-backend.yaml");
    std::fs::write(&allow, permissive_backend(intruder)).unwrap();
    let admitted = wait_until(Duration::from_secs(15), || {
        get().contains(&format!("(peer {intruder}:"))
    });
    assert!(
        admitted,
        "PERMISSIVE backend with an ipBlocks ALLOW: {}",
        get()
    );
    // A DENY on the caller's address closes it: the plaintext went through the tunnel's policy.
    let deny = mesh.config_dir().join("97-deny-intruder.yaml");
    std::fs::write(&deny, deny_intruder(intruder)).unwrap();
    let denied = wait_until(Duration::from_secs(15), || !get().starts_with("200"));
    assert!(
        denied,
        "a DENY on the intruder's address did not apply to plaintext"
    );
    std::fs::remove_file(&deny).unwrap();
    std::fs::remove_file(&allow).unwrap();
    let strict_again = wait_until(Duration::from_secs(15), || !get().starts_with("200"));
    assert!(strict_again, "backend did not return to STRICT");
}

/// `website` is bound to the waypoint, which applies 10-routing.yaml (90/10 canary, header
/// route to v3, abort fault on /fault) and 20-policy.yaml's L7 DENY on /admin.
fn waypoint_applies_routes_faults_and_l7_policy(mesh: &MeshLab) {
    let canary = mesh
        .get("client", WEBSITE_VIP, &["--count", "200", "--summary"])
        .unwrap();
    let (v1, v2, v3) = (
        answers_from(&canary, "v1"),
        answers_from(&canary, "v2"),
        answers_from(&canary, "v3"),
    );
    assert_eq!(
        v1 + v2,
        200,
        "canary: every answer from v1 or v2:\n{canary}"
    );
    assert_eq!(v3, 0, "canary sent traffic to v3:\n{canary}");
    // Binomial(200, 0.1): outside 5..=45 has probability below 1e-6.
    assert!(
        (5..=45).contains(&v2),
        "canary v2 share {v2}/200:\n{canary}"
    );

    let jason = mesh
        .get(
            "client",
            WEBSITE_VIP,
            &["--count", "10", "--summary", "--header", "end-user: jason"],
        )
        .unwrap();
    assert_eq!(
        answers_from(&jason, "v3"),
        10,
        "end-user jason -> v3:\n{jason}"
    );

    // After the waypoint too, the app sees the client pod's address (the waypoint says it in
    // `forwarded`, which n2 believes from the waypoint's identity only).
    let client_ip = mesh.pod_ip("client").unwrap();
    let v3 = mesh
        .get(
            "client",
            WEBSITE_VIP,
            &["--body", "--header", "end-user: jason"],
        )
        .unwrap();
    assert!(
        v3.contains("website v3") && v3.contains(&format!("(peer {client_ip}:")),
        "website v3 behind the waypoint did not see the client's address: {v3}"
    );

    let fault = mesh
        .get(
            "client",
            WEBSITE_VIP,
            &["--path", "/fault", "--count", "3", "--summary"],
        )
        .unwrap();
    assert!(fault.contains("3 x 503"), "abort fault on /fault:\n{fault}");

    let admin = mesh
        .get("client", WEBSITE_VIP, &["--path", "/admin"])
        .unwrap();
    assert!(admin.starts_with("403"), "L7 deny on /admin: {admin}");
    // Other spellings of /admin are normalized before policy (MERGE_SLASHES): denied, or
    // refused as ambiguous, never served.
    for path in [
        "//admin",
        "/admin/",
        "/./admin",
        "/public/../admin",
        "/%61dmin",
        "/%61%64%6d%69%6e/x",
        "/%2e%2e/admin",
        "/admin//x",
        "/public%2F..%2Fadmin",
        "/public%5c..%5cadmin",
        "/adm%69n%00",
    ] {
        let answer = mesh.get("client", WEBSITE_VIP, &["--path", path]).unwrap();
        assert!(
            answer.starts_with("403") || answer.starts_with("400"),
            "{path:?} got past the /admin deny: {answer}"
        );
    }
    let normalized = mesh
        .get("client", WEBSITE_VIP, &["--path", "/admin/../public//page"])
        .unwrap();
    assert!(normalized.starts_with("200"), "{normalized}");

    // The waypoint saw the client's identity over mTLS and counted the requests.
    // n1 named the client in the CONNECT baggage (namespace, workload, canonical service).
    let metrics = mesh.waypoint_metrics().unwrap();
    let from_client = metrics.lines().any(|line| {
        line.starts_with("istio_requests_total{")
            && line.contains("spiffe://cluster.local/ns/demo/sa/client")
            && line.contains("source_workload=\"client\"")
            && line.contains("source_workload_namespace=\"demo\"")
            && line.contains("source_canonical_service=\"client\"")
    });
    assert!(
        from_client,
        "waypoint metrics lack the client principal and workload:\n{metrics}"
    );
    // n2 reported the canary's v2 pod by its canonical service and revision (labels app and
    // version), not by its pod name.
    let metrics = mesh.node_metrics("n2").unwrap();
    let to_v2 = metrics.lines().any(|line| {
        line.starts_with("istio_tcp_connections_opened_total{")
            && line.contains("reporter=\"destination\"")
            && line.contains("destination_canonical_service=\"website\"")
            && line.contains("destination_canonical_revision=\"v2\"")
    });
    assert!(to_v2, "n2 metrics lack website v2:\n{metrics}");
}

fn options(prefix: &str) -> MeshLabOptions {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let work_dir = std::env::temp_dir().join(format!("weft-e2e-{prefix}"));
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir).unwrap();
    let bin_dir = bins::path("mesh-node").parent().unwrap().to_path_buf();
    MeshLabOptions {
        prefix: prefix.to_string(),
        work_dir,
        bin_dir,
        example_dir: root.join("deploy/examples/website"),
    }
}

/// A DENY that stops client -> website-v1, both on n1.
const DENY_CLIENT_TO_WEBSITE_V1: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client-to-website-v1, namespace: demo}
spec:
  selector: {matchLabels: {app: website, version: v1}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]}]
"#;

/// client and website-v1 share node n1: n1 joins them without HBONE, yet the app sees the
/// client's address, both reporters record the connection (not as mTLS), and policy both
/// refuses new connections and closes a live one.
fn same_node_pods_skip_hbone_with_policy_intact(mesh: &mut MeshLab) {
    let website_v1 = format!("{}:8080", mesh.pod_ip("website-v1").unwrap());
    let client_ip = mesh.pod_ip("client").unwrap();
    // Let the admission of the pair made by an earlier call lapse, so this call is checked by
    // the tunnel and admits the pair afresh: the direct connections below, the held one
    // included, then all fall within the new admission's lifetime.
    std::thread::sleep(ADMISSION_LIFETIME + Duration::from_secs(1));
    let seen = mesh.get("client", &website_v1, &["--body"]).unwrap();
    assert!(
        seen.starts_with("200") && seen.contains(&format!("(peer {client_ip}:")),
        "website-v1 did not see the client pod's address: {seen}"
    );
    let metrics = mesh.node_metrics("n1").unwrap();
    let same_node = |reporter: &str| {
        metrics.lines().any(|line| {
            line.starts_with("istio_tcp_connections_opened_total{")
                && line.contains(&format!("reporter=\"{reporter}\""))
                && line.contains("source_workload=\"client\"")
                && line.contains("destination_workload=\"website-v1\"")
                && line.contains("connection_security_policy=\"none\"")
        })
    };
    assert!(
        same_node("source") && same_node("destination"),
        "same-node connection not reported by both sides as unencrypted:\n{metrics}"
    );
    // One request and its answer stay below the join's threshold: the tunnel copied them
    // (busy connections are joined in the kernel: `cargo xtask bench`, redirect_join).
    let copied = metrics.lines().any(|line| {
        line.starts_with("weft_same_node_connections_total{path=\"tunnel\"}")
            && !line.ends_with(" 0")
    });
    assert!(
        copied,
        "the same-node connection was not counted:\n{metrics}"
    );

    // That check admitted the pair: the next connections go straight to website-v1's pod,
    // with no tunnel socket on the way, and are still reported.
    let direct_before = same_node_count(mesh, "direct");
    for _ in 0..3 {
        let answer = mesh.get("client", &website_v1, &["--body"]).unwrap();
        assert!(
            answer.starts_with("200") && answer.contains(&format!("(peer {client_ip}:")),
            "direct same-node connection: {answer}"
        );
    }
    let counted = wait_until(Duration::from_secs(5), || {
        same_node_count(mesh, "direct") > direct_before
    });
    assert!(
        counted,
        "no same-node connection went straight to the pod:\n{}",
        mesh.node_metrics("n1").unwrap()
    );

    // A live connection, then a policy that denies it.
    let hold = mesh.bin("weft-lab-app");
    let args = [
        "hold",
        website_v1.as_str(),
        "--connections",
        "1",
        "--seconds",
        "60",
    ];
    mesh.lab
        .spawn_in_pod("client", "hold-website-v1", &hold, &args)
        .unwrap();
    let opened = wait_until(Duration::from_secs(10), || {
        mesh.log("hold-website-v1").contains("open 1")
    });
    assert!(
        opened,
        "hold never connected: {}",
        mesh.log("hold-website-v1")
    );
    // While a direct connection into website-v1 (STRICT) is open, plaintext from outside the
    // mesh still has no way in: not from a pod outside the mesh, not from the node itself.
    let intruder = mesh
        .get("intruder", &website_v1, &["--timeout-ms", "2000"])
        .unwrap_or_default();
    assert!(
        !intruder.starts_with("200"),
        "intruder reached website-v1 beside a direct connection: {intruder}"
    );
    let from_node = mesh.node_get("n1", &website_v1, "/").unwrap_or_default();
    assert!(
        !from_node.starts_with("200"),
        "n1's host reached website-v1 beside a direct connection: {from_node}"
    );
    let policy = mesh.config_dir().join("97-deny-same-node.yaml");
    std::fs::write(&policy, DENY_CLIENT_TO_WEBSITE_V1).unwrap();
    let closed = wait_until(Duration::from_secs(15), || {
        mesh.log("mesh-node-n1").lines().any(|line| {
            line.contains("revoked by policy") && line.contains("dst.workload=website-v1")
        })
    });
    assert!(
        closed,
        "the live same-node connection outlived the DENY:\n{}",
        mesh.log("mesh-node-n1")
    );
    // It was a direct connection (no tunnel socket to close): the tunnel destroyed the client's
    // socket.
    assert!(
        mesh.log("mesh-node-n1")
            .contains("same-node direct connection revoked"),
        "the held connection was not a direct one:\n{}",
        mesh.log("mesh-node-n1")
    );
    let refused = mesh
        .get("client", &website_v1, &["--timeout-ms", "2000"])
        .unwrap_or_default();
    assert!(
        !refused.starts_with("200"),
        "DENY let a new same-node connection in: {refused}"
    );
    std::fs::remove_file(&policy).unwrap();
    let back = wait_until(Duration::from_secs(15), || {
        mesh.get("client", &website_v1, &["--timeout-ms", "2000"])
            .unwrap_or_default()
            .starts_with("200")
    });
    assert!(
        back,
        "same-node traffic did not come back once the DENY was removed"
    );
    let _ = mesh.lab.stop("hold-website-v1", Duration::from_secs(2));
}

/// How long the tunnel's admission of a same-node pair for direct connections holds
/// (`mesh_node::redirect::direct::ADMISSION_LIFETIME`).
const ADMISSION_LIFETIME: Duration = Duration::from_secs(10);

/// `weft_same_node_connections_total{path}` on n1.
fn same_node_count(mesh: &MeshLab, path: &str) -> u64 {
    let prefix = format!("weft_same_node_connections_total{{path=\"{path}\"}} ");
    let metrics = mesh.node_metrics("n1").unwrap_or_default();
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// Pods started through the CNI chain: a mesh pod's very first connection is captured (the
/// backend's service address answers only through the mesh), a pod outside the mesh starts
/// as before.
fn new_pods_start_captured(mesh: &mut MeshLab) {
    let fresh = std::net::Ipv4Addr::new(10, 211, 1, 90);
    let took = mesh
        .start_pod_via_cni("fresh", "n1", fresh, "demo", "client")
        .expect("a mesh pod starts through weft-cni");
    let first = mesh
        .get("fresh", BACKEND_VIP, &["--timeout-ms", "3000"])
        .unwrap_or_default();
    assert!(
        first.starts_with("200 backend v1"),
        "the new pod's first call (after an ADD of {took:?}) was not carried by the mesh: {first}"
    );
    let sysctl = ["/proc/sys/net/ipv4/tcp_tw_reuse"];
    let prepared = mesh
        .lab
        .run_in_pod("fresh", Path::new("cat"), &sysctl)
        .unwrap();
    assert_eq!(
        prepared.trim(),
        "1",
        "the pod's namespace was prepared before its start"
    );

    let outside = std::net::Ipv4Addr::new(10, 211, 1, 91);
    mesh.start_pod_via_cni("plain", "n1", outside, "elsewhere", "default")
        .expect("a pod outside the mesh starts too");
    let escaped = mesh
        .get("plain", BACKEND_VIP, &["--timeout-ms", "1000"])
        .unwrap_or_default();
    assert!(
        !escaped.starts_with("200"),
        "a pod outside the mesh was captured: {escaped}"
    );

    for (pod, namespace) in [("fresh", "demo"), ("plain", "elsewhere")] {
        mesh.cni("n1", "DEL", pod, namespace, None)
            .expect("DEL never fails");
        mesh.remove_pod(pod).unwrap();
    }
}

#[test]
fn sample_mesh_carries_policy_checked_mtls_traffic() {
    let prefix = "wfe2e";
    let mut mesh = MeshLab::start(options(prefix)).expect("start the sample mesh");

    // Cross-node through both tunnels: client (n1) -> backend (n2) by service IP.
    let answers = mesh
        .get("client", BACKEND_VIP, &["--count", "5", "--summary"])
        .unwrap();
    assert!(
        answers.contains("5 x 200 backend v1"),
        "client -> backend: {answers}"
    );

    // Same node: client and website-v1 both run on n1 (the website calls backend on n2).
    let website_v1 = format!("{}:8080", mesh.pod_ip("website-v1").unwrap());
    let same_node = mesh.get("client", &website_v1, &[]).unwrap();
    assert!(
        same_node.starts_with("200 website v1 -> 200 backend v1"),
        "same node: {same_node}"
    );

    // The backend app sees the client pod's own address: the source tunnel dials from inside
    // the client pod, the destination tunnel connects to the app transparently.
    let client_ip = mesh.pod_ip("client").unwrap();
    let seen = mesh.get("client", BACKEND_VIP, &["--body"]).unwrap();
    assert!(
        seen.contains(&format!("(peer {client_ip}:")),
        "backend did not see the client pod's address: {seen}"
    );

    // Every captured connection of a pod goes to one address (the node tunnel's outbound
    // listener), so the tunnel lets enrolled pods reuse TIME_WAIT tuples (pod_net::prepare);
    // a pod outside the mesh keeps the kernel's default.
    let tw_reuse = |pod: &str| {
        let sysctl = ["/proc/sys/net/ipv4/tcp_tw_reuse"];
        let value = mesh.lab.run_in_pod(pod, Path::new("cat"), &sysctl).unwrap();
        value.trim().to_string()
    };
    assert_eq!(tw_reuse("client"), "1", "enrolled client pod");
    assert_ne!(tw_reuse("intruder"), "1", "pod outside the mesh");

    // A node process (or hostNetwork pod), on the backend's node or another, is outside the
    // mesh: no plaintext into the STRICT backend.
    let backend_direct = format!("{}:8080", mesh.pod_ip("backend").unwrap());
    for node in ["n1", "n2"] {
        let from_node = mesh
            .node_get(node, &backend_direct, "/")
            .unwrap_or_default();
        assert!(
            !from_node.starts_with("200"),
            "{node}'s host reached the STRICT backend in plaintext: {from_node}"
        );
    }

    // The destination tunnel saw the client's SPIFFE identity over mTLS.
    let n2_log = mesh.log("mesh-node-n2");
    assert!(
        n2_log.contains("spiffe://cluster.local/ns/demo/sa/client"),
        "no client identity in n2's access log:\n{n2_log}"
    );

    // An enrolled pod the AuthorizationPolicy does not allow is refused.
    let guest = mesh
        .get("guest", BACKEND_VIP, &["--timeout-ms", "3000"])
        .unwrap();
    assert!(!guest.starts_with("200"), "guest reached backend: {guest}");

    // A pod outside the mesh cannot bypass the tunnel into a STRICT pod.
    let intruder = mesh
        .get("intruder", &backend_direct, &["--timeout-ms", "2000"])
        .unwrap();
    assert!(
        intruder.starts_with("error"),
        "intruder reached backend directly: {intruder}"
    );

    // Metrics with Istio's names are served by the node tunnel.
    let metrics = mesh.node_metrics("n2").unwrap();
    assert!(
        metrics.contains("istio_tcp_connections_opened_total"),
        "{metrics}"
    );

    waypoint_applies_routes_faults_and_l7_policy(&mesh);
    waypoint_verifies_jwts(&mesh);
    permissive_plaintext_passes_the_tunnels_policy(&mesh);
    new_pods_start_captured(&mut mesh);
    same_node_pods_skip_hbone_with_policy_intact(&mut mesh);

    // Broken config is rejected with a message naming the file; the rest of the config and the
    // traffic are untouched.
    let broken = mesh.config_dir().join("98-broken.yaml");
    std::fs::write(&broken, BROKEN_CONFIG).unwrap();
    let rejected = wait_until(Duration::from_secs(15), || {
        mesh.log("mesh-control").contains("98-broken.yaml")
    });
    assert!(
        rejected,
        "mesh-control did not report the broken file:\n{}",
        mesh.log("mesh-control")
    );
    let still = mesh
        .get("client", BACKEND_VIP, &["--count", "3", "--summary"])
        .unwrap();
    assert!(
        still.contains("3 x 200 backend v1"),
        "after bad config: {still}"
    );
    let guest = mesh
        .get("guest", BACKEND_VIP, &["--timeout-ms", "3000"])
        .unwrap();
    assert!(
        !guest.starts_with("200"),
        "policy lost after bad config: {guest}"
    );
    std::fs::remove_file(&broken).unwrap();

    // A broken AuthorizationPolicy fails closed: its namespace is denied until it is fixed.
    let broken_policy = mesh.config_dir().join("99-broken-policy.yaml");
    std::fs::write(&broken_policy, BROKEN_POLICY).unwrap();
    let denied = wait_until(Duration::from_secs(15), || {
        let out = mesh
            .get("client", BACKEND_VIP, &["--timeout-ms", "2000"])
            .unwrap_or_default();
        out.starts_with("error")
    });
    assert!(denied, "a broken policy did not deny its namespace");
    std::fs::remove_file(&broken_policy).unwrap();
    let recovered = wait_until(Duration::from_secs(15), || {
        let out = mesh
            .get("client", BACKEND_VIP, &["--timeout-ms", "2000"])
            .unwrap_or_default();
        out.starts_with("200 backend v1")
    });
    assert!(
        recovered,
        "traffic did not recover once the broken policy was removed"
    );

    // The control plane goes away: nodes keep their last config and traffic keeps flowing;
    // when it is back, nodes resubscribe and resynchronise.
    mesh.stop_control().expect("stop mesh-control");
    let during = mesh
        .get("client", BACKEND_VIP, &["--count", "3", "--summary"])
        .unwrap();
    assert!(
        during.contains("3 x 200 backend v1"),
        "with control down: {during}"
    );
    mesh.start_control().expect("restart mesh-control");
    let resynced = wait_until(Duration::from_secs(20), || {
        mesh.log("mesh-node-n1")
            .matches("mesh updated from mesh-control")
            .count()
            >= 2
    });
    assert!(
        resynced,
        "n1 did not resync after the control restart:\n{}",
        mesh.log("mesh-node-n1")
    );

    // A node tunnel restart: it drains, detaches, comes back, re-enrolls its pods.
    mesh.restart_node("n2").expect("restart mesh-node on n2");
    let after = mesh
        .get("client", BACKEND_VIP, &["--count", "3", "--summary"])
        .unwrap();
    assert!(
        after.contains("3 x 200 backend v1"),
        "after restart: {after}"
    );
    let log = mesh.log("mesh-node-n2");
    assert!(
        log.contains("pod enrolled in the mesh"),
        "n2 did not re-enroll its pods:\n{log}"
    );

    drop(mesh);
    assert!(
        list_with_prefix(&format!("{prefix}-")).is_empty(),
        "namespaces left behind"
    );
    let cgroup = cgroup2_mount().unwrap().join("weft-lab").join(prefix);
    assert!(!cgroup.exists(), "cgroup left behind: {}", cgroup.display());
}
