//! Loader lifecycle with real eBPF (needs root; fails loudly otherwise): eBPF log records reach
//! `tracing` (also after adopting pinned programs), IPv4-mapped IPv6 connects are redirected like IPv4, and dropping the loader
//! detaches the programs.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    fmt::Write as _,
    net::{SocketAddr, SocketAddrV6, TcpStream},
    time::Duration,
};

use mesh_node::redirect::{pin, Config, EnrollMode, Redirect};
use support::{bpffs::Bpffs, *};
use tokio::sync::mpsc;
use tracing_subscriber::{layer::SubscriberExt, Layer};

/// Sends every event's fields, formatted, to a channel.
struct Capture(mpsc::Sender<String>);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let _ = write!(self.0, "{}={:?} ", field.name(), value);
            }
        }
        let mut fields = Fields(format!("{} ", event.metadata().target()));
        event.record(&mut fields);
        let _ = self.0.try_send(fields.0);
    }
}

/// Loads the programs (twice with `pinned`: the second load adopts the first one's pins), makes
/// an enrolled pod connect, and waits for the connect4 debug record to reach `tracing`.
fn assert_log_records_forwarded(subnet: u8, cgroup: &str, pinned: Option<&Bpffs>) {
    let pod = Pod::new(subnet).expect("pod");
    let (tx, mut rx) = mpsc::channel(1_024);
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(Capture(tx)));
    // Current-thread runtime: the forwarding task runs on this thread, under the subscriber above.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cg = TestCgroup::join(cgroup).expect("cgroup");
        let tunnel = listen_on(pod.host_ip);
        let mut config = Config::new(&cg.relative, v4(&tunnel));
        config.log_level = tracing::Level::DEBUG;
        config.pin_path = pinned.map(Bpffs::pins);
        if pinned.is_some() {
            drop(Redirect::load(&config).expect("first pinned load"));
        }
        let mut redirect =
            Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
        redirect
            .enroll(pod.cookie(), EnrollMode::Capture)
            .expect("enroll");
        let _client = pod
            .connect(SocketAddr::from((pod.host_ip, 4242)))
            .expect("redirected connect");
        let wanted = async {
            while let Some(line) = rx.recv().await {
                if line.starts_with("weft::ebpf")
                    && line.contains("redirected connect4 to port 4242")
                {
                    return line;
                }
            }
            panic!("log channel closed");
        };
        let line = tokio::time::timeout(WAIT, wanted)
            .await
            .expect("eBPF debug record forwarded within 5s");
        assert!(line.contains("program="), "{line}");
        drop(redirect);
        if let Some(bpffs) = pinned {
            pin::remove_all(&bpffs.pins()).expect("cleanup");
        }
        drop(cg);
    });
}

#[test]
fn ebpf_log_records_are_forwarded_to_tracing() {
    let _serial = serial();
    assert_log_records_forwarded(51, "wfte-lifecycle-log", None);
}

#[test]
fn ebpf_log_records_are_forwarded_after_adopting_pinned_programs() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-log");
    assert_log_records_forwarded(54, "wfte-lifecycle-log-pinned", Some(&bpffs));
}

#[test]
fn ipv4_mapped_ipv6_connects_are_redirected_and_answered() {
    let _serial = serial();
    let pod = Pod::new(52).expect("pod");
    let cg = TestCgroup::join("wfte-lifecycle-v6").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let mut redirect = Redirect::load(&Config::new(&cg.relative, v4(&tunnel))).expect("load");
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let mapped = SocketAddr::V6(SocketAddrV6::new(
        pod.host_ip.to_ipv6_mapped(),
        v4(&server).port(),
        0,
        0,
    ));

    // An AF_INET6 socket (as dual-stack apps use) connecting to an IPv4-mapped address.
    let mut client = pod
        .run_in(|| {
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            socket.connect_timeout(&mapped.into(), WAIT)?;
            Ok::<_, std::io::Error>(TcpStream::from(socket))
        })
        .expect("mapped connect succeeds");
    let mut at_tunnel = accept_within(&tunnel, WAIT)
        .expect("poll")
        .expect("tunnel got the mapped connect");
    assert_eq!(
        original_dst(&at_tunnel).expect("SO_ORIGINAL_DST"),
        v4(&server)
    );
    assert_eq!(
        client.peer_addr().expect("getpeername"),
        mapped,
        "client sees the mapped original"
    );
    assert_carries(&mut client, &mut at_tunnel, b"mapped");
    assert!(accept_within(&server, Duration::ZERO)
        .expect("poll")
        .is_none());
    drop(redirect);
    drop(cg);
}

#[test]
fn dropping_the_loader_detaches_every_program() {
    let _serial = serial();
    let pod = Pod::new(53).expect("pod");
    let cg = TestCgroup::join("wfte-lifecycle-drop").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let target = SocketAddr::V4(v4(&server));
    let mut redirect = Redirect::load(&Config::new(&cg.relative, v4(&tunnel))).expect("load");
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let _redirected = pod.connect(target).expect("connect while attached");
    assert!(
        accept_within(&tunnel, WAIT).expect("poll").is_some(),
        "redirected while attached"
    );

    redirect.shutdown();
    let mut client = pod.connect(target).expect("connect after shutdown");
    let mut direct = accept_within(&server, WAIT)
        .expect("poll")
        .expect("server reached after detach");
    assert_carries(&mut client, &mut direct, b"detached");
    assert!(accept_within(&tunnel, Duration::ZERO)
        .expect("poll")
        .is_none());
    assert_eq!(client.peer_addr().expect("peer"), target);
    drop(cg);
}
