//! HTTP/1.1 upgrades (WebSocket and friends): once the upstream answers 101, both connections
//! are taken over from hyper and bytes are copied both ways until either side closes.

use http::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::Body;

/// Spawns the relay between the downstream and upstream upgraded connections. The 101
/// response keeps its `Upgrade`/`Connection` headers so the client completes the switch.
pub fn relay(downstream: OnUpgrade, response: &mut Response<Body>) {
    let upstream = hyper::upgrade::on(response);
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((sent, received)) => tracing::debug!(sent, received, "upgraded connection closed"),
            Err(error) => tracing::debug!(%error, "upgraded connection failed"),
        }
    });
}
