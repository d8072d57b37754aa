//! Every Weft binary explains itself with `--help`, logs JSON when asked, and exits cleanly (status
//! 0) soon after SIGTERM, which is how Kubernetes stops it.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use weft_tests::{bins, wait::wait_until};

/// Binaries and a phrase their `--help` must contain.
const BINARIES: &[(&str, &str)] = &[
    ("mesh-node", "node tunnel"),
    ("mesh-waypoint", "L7 proxy"),
    ("mesh-control", "control service"),
];

/// A node config that binds every listener on loopback port 0 (self-signed in-process CA).
const NODE_CONFIG: &str = "node_name: n1
listeners:
  outbound: 127.0.0.1:0
  inbound_plaintext: 127.0.0.1:0
  hbone: 127.0.0.1:0
  metrics: 127.0.0.1:0
  readiness: 127.0.0.1:0
  admin: 127.0.0.1:0
";

/// Arguments that let `name` start on loopback with port 0, using files in `dir`.
fn start_args(name: &str, dir: &Path) -> Vec<String> {
    let path = |file: &str| dir.join(file).display().to_string();
    match name {
        "mesh-node" => {
            std::fs::write(dir.join("node.yaml"), NODE_CONFIG).unwrap();
            vec!["--config".into(), path("node.yaml")]
        }
        "mesh-waypoint" => {
            std::fs::write(dir.join("waypoint.yaml"), "routes: []\n").unwrap();
            let args = ["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"];
            let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            args.extend(["--config".into(), path("waypoint.yaml")]);
            args
        }
        "mesh-control" => {
            std::fs::create_dir_all(dir.join("config")).unwrap();
            std::fs::write(dir.join("tokens"), "n1 bootstrap-token-for-n1\n").unwrap();
            let args = [
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ];
            let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            args.extend(["--config-dir".into(), path("config")]);
            args.extend(["--bootstrap-tokens".into(), path("tokens")]);
            args
        }
        other => panic!("no start arguments for {other}"),
    }
}

#[test]
fn help_describes_each_binary() {
    for (name, phrase) in BINARIES {
        let out = Command::new(bins::path(name))
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --help failed: {out:?}");
        assert!(
            text.contains(phrase),
            "{name} --help lacks {phrase:?}:\n{text}"
        );
        assert!(
            text.contains("--log-format"),
            "{name} --help lacks --log-format:\n{text}"
        );
    }
}

#[test]
fn each_binary_logs_json_and_exits_zero_on_sigterm() {
    for (name, _) in BINARIES {
        let dir = std::env::temp_dir().join(format!("weft-bin-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(bins::path(name))
            .args(start_args(name, &dir))
            .args(["--log-format", "json", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The first log line says the binary is up; it must be a JSON object.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(20));
        let first = first.unwrap_or_else(|_| panic!("{name} logged nothing within 20 s"));
        assert!(
            first.starts_with('{') && first.contains("\"level\""),
            "{name}: first log line is not JSON: {first}"
        );
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = wait_with_deadline(&mut child, Duration::from_secs(20));
        let status = status.unwrap_or_else(|| panic!("{name} still running 20 s after SIGTERM"));
        assert!(
            status.success(),
            "{name} exited with {status} after SIGTERM"
        );
    }
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    deadline: Duration,
) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(deadline, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
    }
    status
}
