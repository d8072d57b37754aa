//! The processes the benchmark measures: the `mesh-waypoint` binary (static config, plain
//! listener) and nginx as a reverse proxy, each on a free loopback port with generated
//! config in a private temp dir; plus `/proc` readings of CPU time and peak RSS.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// A child process killed (and reaped) on drop, with its scratch dir removed.
pub struct Proc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("weft-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A loopback port free right now (the child binds it a moment later).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("probing a free port")?;
    Ok(listener.local_addr()?)
}

/// Waits until `addr` accepts connections or `child` exits, for up to 10 s.
fn wait_listening(child: &mut Child, addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up: {status}");
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} not listening on {addr} after 10 s")
}

/// Starts the waypoint binary routing `Host: bench` to `backend`.
pub fn waypoint(backend: SocketAddr) -> anyhow::Result<Proc> {
    let dir = scratch("waypoint")?;
    let config = dir.join("waypoint.yaml");
    let yaml = format!(
        "destinations: [{{name: b, endpoints: [{{address: \"{backend}\"}}]}}]\n\
         routes: [{{name: r, hosts: [bench], rules: [{{route: [{{destination: b}}]}}]}}]\n"
    );
    std::fs::write(&config, yaml)?;
    let addr = free_port()?;
    let metrics = free_port()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-waypoint"))
        .arg(format!("--config={}", config.display()))
        .arg(format!("--listen={addr}"))
        .arg(format!("--metrics={metrics}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mesh-waypoint")?;
    wait_listening(&mut child, addr, "mesh-waypoint")?;
    Ok(Proc { child, addr, dir })
}

/// Starts nginx (`worker_processes` = `workers`) proxying to `backend` with upstream
/// keep-alive; `Ok(None)` when nginx is not installed.
pub fn nginx(backend: SocketAddr, workers: usize) -> anyhow::Result<Option<Proc>> {
    let Some(binary) = find_nginx() else {
        return Ok(None);
    };
    let dir = scratch("nginx")?;
    let addr = free_port()?;
    let config = dir.join("nginx.conf");
    std::fs::write(&config, nginx_config(&dir, addr, backend, workers))?;
    let mut child = Command::new(binary)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&config)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    wait_listening(&mut child, addr, "nginx")?;
    Ok(Some(Proc { child, addr, dir }))
}

fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn nginx_config(dir: &Path, listen: SocketAddr, backend: SocketAddr, workers: usize) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 upstream backend {{ server {backend}; keepalive 64; }}\n\
         \x20 server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://backend;\n\
         \x20     proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

/// User + system CPU time of `pid` so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc stat")?.parse()?)
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks()))
}

/// `CLK_TCK`; 100 on every Linux architecture the mesh runs on.
fn clock_ticks() -> f64 {
    100.0
}

/// Peak resident set (`VmHWM`) of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?)
}
