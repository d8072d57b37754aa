use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use mesh_core::proto::control::v1 as pb;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    sync::watch,
};

use super::*;

const POD_IP: &str = "10.9.0.7";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test ip")
}

struct Harness {
    directory: watch::Sender<PodDirectory>,
    enrolled: watch::Sender<BTreeSet<IpAddr>>,
    listening: watch::Sender<BTreeMap<IpAddr, PathBuf>>,
    started: watch::Receiver<StartedPods>,
    context: CniContext,
}

fn harness(timeout: Duration) -> Harness {
    let (directory, directory_rx) = watch::channel(PodDirectory::default());
    let (enrolled, enrolled_rx) = watch::channel(BTreeSet::new());
    let (listening, listening_rx) = watch::channel(BTreeMap::new());
    let (started_tx, started) = watch::channel(StartedPods::new());
    let context = CniContext {
        directory: directory_rx,
        enrolled: Some(enrolled_rx),
        listening: Some(listening_rx),
        started: started_tx,
        timeout,
    };
    Harness {
        directory,
        enrolled,
        listening,
        started,
        context,
    }
}

fn add(name: &str) -> wire::Request {
    wire::Request::Add {
        namespace: "demo".into(),
        name: name.into(),
        netns: "/var/run/netns/test".into(),
        ips: vec![ip(POD_IP)],
    }
}

fn directory(pods: &[(&str, bool)]) -> PodDirectory {
    PodDirectory {
        known: true,
        pods: pods.iter().map(|(uid, m)| (uid.to_string(), *m)).collect(),
    }
}

#[tokio::test]
async fn a_mesh_pod_is_answered_only_once_enrolled_and_listening() {
    let h = harness(Duration::from_secs(10));
    h.directory.send_replace(directory(&[("demo/web", true)]));
    let context = h.context.clone();
    let pending = tokio::spawn(async move { answer(add("web"), &context).await });
    let mut started = h.started.clone();
    started.changed().await.expect("start recorded");
    assert_eq!(started.borrow()["demo/web"], [ip(POD_IP)]);
    // Enrolled but no listener yet: still waiting (the pod's inbound would be refused, not open).
    h.enrolled.send_replace([ip(POD_IP)].into());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !pending.is_finished(),
        "answered before the listeners were up"
    );
    h.listening
        .send_replace([(ip(POD_IP), PathBuf::from("/var/run/netns/test"))].into());
    let reply = pending.await.expect("task");
    assert_eq!(
        reply,
        wire::Reply {
            ok: true,
            captured: true,
            error: None
        }
    );
}

#[tokio::test]
async fn a_pod_outside_the_mesh_starts_at_once_and_is_not_recorded() {
    let h = harness(Duration::from_secs(10));
    h.directory.send_replace(directory(&[("demo/web", false)]));
    let reply = answer(add("web"), &h.context).await;
    assert!(reply.ok && !reply.captured, "{reply:?}");
    assert!(h.started.borrow().is_empty());
}

#[tokio::test]
async fn an_unknown_pod_fails_closed_after_the_timeout() {
    let h = harness(Duration::from_millis(100));
    h.directory.send_replace(directory(&[("demo/other", true)]));
    let reply = answer(add("web"), &h.context).await;
    assert!(!reply.ok, "{reply:?}");
    let error = reply.error.expect("reason");
    assert!(error.contains("has not named pod demo/web"), "{error}");
}

#[tokio::test]
async fn without_a_mesh_view_every_pod_fails_closed() {
    let h = harness(Duration::from_millis(100));
    let reply = answer(add("web"), &h.context).await;
    assert!(!reply.ok);
    assert!(reply.error.expect("reason").contains("no mesh view"));
}

#[tokio::test]
async fn the_pod_is_answered_when_the_mesh_names_it_later() {
    let h = harness(Duration::from_secs(10));
    h.directory.send_replace(directory(&[]));
    let context = h.context.clone();
    let pending = tokio::spawn(async move { answer(add("web"), &context).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished());
    h.enrolled.send_replace([ip(POD_IP)].into());
    h.listening
        .send_replace([(ip(POD_IP), PathBuf::from("/x"))].into());
    h.directory.send_replace(directory(&[("demo/web", true)]));
    let reply = pending.await.expect("task");
    assert!(reply.ok && reply.captured, "{reply:?}");
}

#[tokio::test]
async fn a_mesh_pod_on_a_node_that_does_not_capture_is_refused() {
    let mut h = harness(Duration::from_secs(10));
    h.context.enrolled = None;
    h.directory.send_replace(directory(&[("demo/web", true)]));
    let reply = answer(add("web"), &h.context).await;
    assert!(!reply.ok);
    assert!(reply.error.expect("reason").contains("--redirect-cgroup"));
}

#[tokio::test]
async fn a_mesh_pod_without_address_is_refused() {
    let h = harness(Duration::from_secs(10));
    h.directory.send_replace(directory(&[("demo/web", true)]));
    let request = wire::Request::Add {
        namespace: "demo".into(),
        name: "web".into(),
        netns: "/x".into(),
        ips: vec![],
    };
    let reply = answer(request, &h.context).await;
    assert!(!reply.ok);
}

#[tokio::test]
async fn del_forgets_the_start() {
    let h = harness(Duration::from_secs(10));
    h.context
        .started
        .send_replace([("demo/web".to_string(), vec![ip(POD_IP)])].into());
    let del = wire::Request::Del {
        namespace: "demo".into(),
        name: "web".into(),
    };
    assert!(answer(del, &h.context).await.ok);
    assert!(h.started.borrow().is_empty());
}

fn workload(node: &str, addresses: Vec<Vec<u8>>) -> pb::Workload {
    pb::Workload {
        node: node.into(),
        addresses,
        tunnel: pb::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

#[test]
fn addresses_are_filled_only_for_this_nodes_pods_without_one() {
    let mut snapshot = MeshSnapshot::default();
    snapshot
        .workloads
        .insert("demo/new".into(), workload("n1", vec![]));
    snapshot
        .workloads
        .insert("demo/known".into(), workload("n1", vec![vec![10, 9, 0, 1]]));
    snapshot
        .workloads
        .insert("demo/elsewhere".into(), workload("n2", vec![]));
    let started: StartedPods = [
        ("demo/new".to_string(), vec![ip(POD_IP)]),
        ("demo/known".to_string(), vec![ip("10.9.0.99")]),
        ("demo/elsewhere".to_string(), vec![ip("10.9.0.98")]),
        ("demo/gone".to_string(), vec![ip("10.9.0.97")]),
    ]
    .into();
    let filled = fill_addresses(&snapshot, "n1", &started);
    assert_eq!(filled.workloads["demo/new"].addresses, [vec![10, 9, 0, 7]]);
    assert_eq!(
        filled.workloads["demo/known"].addresses,
        [vec![10, 9, 0, 1]],
        "the feed's address wins"
    );
    assert!(filled.workloads["demo/elsewhere"].addresses.is_empty());
    assert!(!filled.workloads.contains_key("demo/gone"));
    let directory = PodDirectory::from_snapshot(&snapshot, "n1");
    assert_eq!(
        directory.pods.keys().collect::<Vec<_>>(),
        ["demo/known", "demo/new"]
    );
}

async fn exchange(path: &std::path::Path, line: &[u8]) -> wire::Reply {
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    stream.write_all(line).await.expect("write");
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .await
        .expect("read");
    serde_json::from_str(&reply).expect("reply json")
}

#[tokio::test]
async fn the_socket_is_owner_only_and_refuses_malformed_requests() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("weft-cni-test-{}", std::process::id()));
    let path = dir.join("cni.sock");
    let h = harness(Duration::from_secs(10));
    h.directory.send_replace(directory(&[("demo/web", false)]));
    let (drain, watch) = mesh_core::drain::channel();
    serve(&path, h.context.clone(), watch).expect("serve");
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let reply = exchange(&path, b"{\"command\":\"add\",\"namespace\":\"demo\"}\n").await;
    assert!(!reply.ok && reply.error.expect("reason").contains("malformed"));
    let unknown_field = br#"{"command":"del","namespace":"demo","name":"web","extra":1}"#;
    let reply = exchange(&path, &[unknown_field.as_slice(), b"\n"].concat()).await;
    assert!(!reply.ok, "unknown fields are refused");
    let mut request = serde_json::to_vec(&add("web")).expect("json");
    request.push(b'\n');
    let reply = exchange(&path, &request).await;
    assert!(reply.ok && !reply.captured, "{reply:?}");
    let huge = vec![b' '; wire::MAX_MESSAGE + 10];
    let reply = exchange(&path, &huge).await;
    assert!(!reply.ok);
    drain.drain(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_dual_stack_pod_waits_for_both_families() {
    let h = harness(Duration::from_secs(10));
    h.directory.send_replace(directory(&[("demo/web", true)]));
    let v6 = ip("fd00:9::7");
    let request = wire::Request::Add {
        namespace: "demo".into(),
        name: "web".into(),
        netns: "/x".into(),
        ips: vec![ip(POD_IP), v6],
    };
    let context = h.context.clone();
    let pending = tokio::spawn(async move { answer(request, &context).await });
    let listening: BTreeMap<IpAddr, PathBuf> =
        [(ip(POD_IP), PathBuf::from("/x")), (v6, PathBuf::from("/x"))].into();
    h.listening.send_replace(listening);
    h.enrolled.send_replace([ip(POD_IP)].into());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !pending.is_finished(),
        "answered with the IPv6 address not enrolled"
    );
    h.enrolled.send_replace([ip(POD_IP), v6].into());
    assert!(pending.await.expect("task").captured);
    let mut snapshot = MeshSnapshot::default();
    snapshot
        .workloads
        .insert("demo/web".into(), workload("n1", vec![]));
    let filled = fill_addresses(&snapshot, "n1", &h.started.borrow());
    assert_eq!(filled.workloads["demo/web"].addresses.len(), 2);
    assert_eq!(filled.workloads["demo/web"].addresses[1].len(), 16);
}
