//! The lab harness itself, on the real kernel (root): pods on different nodes reach each other
//! through the fabric, and teardown leaves no namespace or cgroup behind.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use weft_tests::{
    lab::{cgroup::cgroup2_mount, netns::list_with_prefix, Lab, LabSpec, PodSpec},
    wait::retry_until_200,
};

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft-lab-app"))
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        uid_line.split_whitespace().nth(2) == Some("0"),
        "lab tests need root (network namespaces and cgroups): run `sudo -E cargo xtask test`"
    );
}

#[test]
fn pods_on_two_nodes_talk_and_teardown_is_complete() {
    require_root();
    let prefix = format!("wlt{}", std::process::id() % 10_000);
    let logs = std::env::temp_dir().join(format!("weft-lab-test-{prefix}"));
    let spec = LabSpec {
        prefix: prefix.clone(),
        nodes: vec!["n1".into(), "n2".into()],
        pods: vec![
            PodSpec {
                name: "web".into(),
                node: "n1".into(),
            },
            PodSpec {
                name: "client".into(),
                node: "n2".into(),
            },
            PodSpec {
                name: "peer".into(),
                node: "n1".into(),
            },
        ],
    };
    {
        let mut lab = Lab::create(&spec, &logs).expect("create lab");
        let web_ip = lab.pod("web").unwrap().ip;
        let listen = format!("{web_ip}:8080");
        lab.spawn_in_pod(
            "web",
            "web",
            &app(),
            &[
                "serve",
                "--listen",
                &listen,
                "--name",
                "web",
                "--version",
                "v1",
            ],
        )
        .expect("start web");
        let target = format!("{web_ip}:8080");
        // Cross-node (client on n2) and same-node (peer on n1).
        for from in ["client", "peer"] {
            let out = retry_get(&lab, from, &target);
            assert!(out.starts_with("200 web v1"), "{from} got {out:?}");
        }
        // Each pod's process ran in the pod's cgroup.
        let cgroup = lab.pod("web").unwrap().cgroup.path().to_path_buf();
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
        assert!(
            !procs.trim().is_empty(),
            "web server is not in {}",
            cgroup.display()
        );
    }
    assert!(
        list_with_prefix(&format!("{prefix}-")).is_empty(),
        "namespaces left behind"
    );
    let lab_cgroup = cgroup2_mount().unwrap().join("weft-lab").join(&prefix);
    assert!(
        !Path::new(&lab_cgroup).exists(),
        "cgroup left behind: {}",
        lab_cgroup.display()
    );
}

/// The server needs a moment to bind: retry for up to five seconds.
fn retry_get(lab: &Lab, from: &str, target: &str) -> String {
    let answer = retry_until_200(Duration::from_secs(5), || {
        lab.run_in_pod(from, &app(), &["get", target])
    });
    answer.unwrap_or_else(|error| format!("{error:#}"))
}
