//! The `mesh-node` binary in static mode: its config file holds only the node's own settings,
//! the mesh comes from a saved feed (`--mesh-file`), and a config file that still describes the
//! mesh itself is refused with where the mesh comes from now.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mesh_core::{
    feed_file,
    proto::{address_bytes, build, control::v1 as pb},
};

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn settings(admin: SocketAddr) -> String {
    format!(
        "node_name: n1\nin_pod: {{ enabled: false }}\nlisteners:\n  outbound: 127.0.0.1:0\n  \
         inbound_plaintext: 127.0.0.1:0\n  hbone: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n  \
         readiness: 127.0.0.1:0\n  admin: {admin}\n"
    )
}

fn saved_feed() -> String {
    let mut web = build::workload("shop", "web-0", "web", "10.9.0.5".parse().unwrap(), "n1");
    web.addresses
        .push(address_bytes(&"fd00:9::5".parse().unwrap()));
    let db = build::workload("shop", "db-0", "db", "10.9.1.7".parse().unwrap(), "n2");
    let update = pb::NodeUpdate {
        feed_id: "saved".into(),
        version: 1,
        reset: true,
        complete: true,
        upserts: [web, db]
            .into_iter()
            .map(|w| pb::Resource {
                kind: Some(pb::resource::Kind::Workload(w)),
            })
            .collect(),
        removals: vec![],
    };
    feed_file::to_yaml(&update).expect("yaml")
}

fn mesh_node(config: &Path, mesh_file: Option<&Path>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mesh-node"));
    command.arg("--config").arg(config);
    if let Some(file) = mesh_file {
        command.arg("--mesh-file").arg(file);
    }
    command.env("RUST_LOG", "warn");
    command
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/config_dump` once the admin listener answers.
fn config_dump(admin: SocketAddr) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(admin) {
            stream.set_read_timeout(Some(WAIT)).expect("timeout");
            let request = "GET /config_dump HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n";
            stream.write_all(request.as_bytes()).expect("request");
            let mut response = String::new();
            stream.read_to_string(&mut response).expect("response");
            return response;
        }
        assert!(Instant::now() < deadline, "admin listener never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_saved_feed_is_the_mesh_of_a_node_without_control() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("node.yaml");
    std::fs::write(&config, settings(admin)).expect("config");
    let feed = dir.path().join("mesh.yaml");
    std::fs::write(&feed, saved_feed()).expect("feed");
    let child = mesh_node(&config, Some(&feed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mesh-node runs");
    let _running = Running(child);
    let dump = config_dump(admin);
    let json = &dump[dump.find('{').expect("json body")..];
    let dump: serde_json::Value = serde_json::from_str(json).expect("dump is json");
    let workloads = dump["workloads"].as_array().expect("workloads");
    let names: Vec<&str> = workloads
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["web-0", "db-0"], "both workloads, by address");
    assert_eq!(
        workloads[0]["addresses"],
        serde_json::json!(["10.9.0.5", "fd00:9::5"]),
        "a dual-stack pod keeps both addresses"
    );
    assert_eq!(
        dump["certificates"],
        serde_json::json!(["spiffe://cluster.local/ns/shop/sa/web"]),
        "a certificate for the local pod only"
    );
}

#[test]
fn a_config_file_that_describes_the_mesh_is_refused_with_where_it_comes_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("node.yaml");
    let old = format!(
        "{}workloads:\n  - {{ name: a, namespace: x, service_account: a, ip: 10.0.0.1, node: n1 }}\n",
        settings(admin)
    );
    std::fs::write(&config, old).expect("config");
    let output = mesh_node(&config, None).output().expect("mesh-node runs");
    assert!(
        !output.status.success(),
        "an old config file must not start a node"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("workloads") && stderr.contains("--mesh-file"),
        "{stderr}"
    );
}
