//! Paused-time table tests for the retry layer.

use std::sync::{atomic::AtomicU32, Mutex};

use super::*;
use crate::rng::Sequence;

/// A fake upstream answering with a scripted sequence of outcomes; counts calls.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<Vec<Step>>>,
    calls: Arc<AtomicU32>,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Status(u16),
    Connect,
    Reset,
    Hang,
}

impl Scripted {
    fn new(steps: &[Step]) -> Self {
        let mut script = steps.to_vec();
        script.reverse();
        Self {
            script: Arc::new(Mutex::new(script)),
            calls: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl Service<Request<Body>> for Scripted {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Outcome> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let step = self
            .script
            .lock()
            .map(|mut s| s.pop())
            .ok()
            .flatten()
            .unwrap_or(Step::Status(200));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        Box::pin(async move {
            match step {
                Step::Status(code) => {
                    let mut r = Response::new(body::empty());
                    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                    Ok(r)
                }
                Step::Connect => Err(ProxyError::ConnectFailure {
                    endpoint: addr,
                    source: "refused".into(),
                }),
                Step::Reset => Err(ProxyError::UpstreamReset {
                    endpoint: addr,
                    source: "reset".into(),
                }),
                Step::Hang => std::future::pending().await,
            }
        })
    }
}

fn policy(retries: u32, on: &str, per_try_ms: Option<u64>) -> RetryPolicy {
    RetryPolicy {
        retries,
        per_try_timeout: per_try_ms.map(Duration::from_millis),
        on: RetryOn::parse(on),
        backoff: Duration::from_millis(25),
    }
}

async fn run_case(
    p: RetryPolicy,
    steps: &[Step],
    budget: Arc<RetryBudget>,
) -> (Result<u16, String>, u32) {
    let upstream = Scripted::new(steps);
    let calls = upstream.calls.clone();
    let rng: SharedRng = Arc::new(Sequence::new(vec![7]));
    let svc = RetryLayer::new(p, budget, rng).layer(upstream);
    let req = Request::new(body::empty());
    let got = tokio::time::timeout(Duration::from_secs(60), svc.oneshot(req))
        .await
        .expect("retry loop finishes");
    (
        got.map(|r| r.status().as_u16())
            .map_err(|e| e.flag().to_owned()),
        calls.load(Ordering::SeqCst),
    )
}

type Case = (RetryPolicy, Vec<Step>, Result<u16, &'static str>, u32);

#[tokio::test(start_paused = true)]
async fn retry_table() {
    use Step::*;
    let cases: Vec<Case> = vec![
        (
            policy(2, "5xx", None),
            vec![Status(500), Status(200)],
            Ok(200),
            2,
        ),
        (
            policy(2, "5xx", None),
            vec![Status(500), Status(500), Status(500)],
            Ok(500),
            3,
        ),
        (
            policy(2, "gateway-error", None),
            vec![Status(500)],
            Ok(500),
            1,
        ),
        (
            policy(2, "gateway-error", None),
            vec![Status(503), Status(200)],
            Ok(200),
            2,
        ),
        (
            policy(2, "connect-failure", None),
            vec![Connect, Status(200)],
            Ok(200),
            2,
        ),
        (
            policy(2, "connect-failure", None),
            vec![Reset],
            Err("UC"),
            1,
        ),
        (
            policy(2, "reset", None),
            vec![Reset, Reset, Status(201)],
            Ok(201),
            3,
        ),
        (
            policy(2, "retriable-4xx", None),
            vec![Status(409), Status(200)],
            Ok(200),
            2,
        ),
        (
            policy(2, "retriable-4xx", None),
            vec![Status(404)],
            Ok(404),
            1,
        ),
        (
            policy(1, "gateway-error", Some(100)),
            vec![Hang, Status(200)],
            Ok(200),
            2,
        ),
        (
            policy(1, "gateway-error", Some(100)),
            vec![Hang, Hang],
            Err("UT"),
            2,
        ),
        (policy(0, "5xx", None), vec![Status(500)], Ok(500), 1),
    ];
    for (p, steps, want, want_calls) in cases {
        let label = format!("{p:?} {steps:?}");
        let (got, calls) = run_case(p, &steps, Arc::new(RetryBudget::new(20, 3))).await;
        assert_eq!(got, want.map_err(str::to_owned), "{label}");
        assert_eq!(calls, want_calls, "{label}");
    }
}

/// A body of `len` bytes in one chunk, with no declared size (like chunked encoding).
fn unsized_body(len: usize) -> Body {
    let chunk = http_body::Frame::data(Bytes::from(vec![b'x'; len]));
    let frames = futures::stream::iter(vec![Ok::<_, crate::body::BoxError>(chunk)]);
    body::boxed(http_body_util::StreamBody::new(frames))
}

#[tokio::test(start_paused = true)]
async fn body_replay_table() {
    // (body, calls expected when the first attempt gets 503 and a retry would get 200)
    let cases: Vec<(Body, u32, &str)> = vec![
        (body::full("payload"), 2, "small sized body is replayed"),
        (
            body::full(vec![b'x'; MAX_REPLAY_BODY]),
            2,
            "body at the limit is replayed",
        ),
        (
            body::full(vec![b'x'; MAX_REPLAY_BODY + 1]),
            1,
            "larger body streams once",
        ),
        (unsized_body(10), 1, "unsized body streams once"),
    ];
    for (body, want_calls, label) in cases {
        let upstream = Scripted::new(&[Step::Status(503), Step::Status(200)]);
        let calls = upstream.calls.clone();
        let rng: SharedRng = Arc::new(Sequence::new(vec![]));
        let budget = Arc::new(RetryBudget::new(20, 3));
        let svc = RetryLayer::new(policy(3, "5xx", None), budget, rng).layer(upstream);
        let got = svc.oneshot(Request::new(body)).await.expect("response");
        let want_status = if want_calls == 2 { 200 } else { 503 };
        assert_eq!(got.status().as_u16(), want_status, "{label}");
        assert_eq!(calls.load(Ordering::SeqCst), want_calls, "{label}");
    }
}

#[tokio::test(start_paused = true)]
async fn exhausted_budget_stops_retries() {
    let budget = Arc::new(RetryBudget::new(20, 0));
    let (got, calls) = run_case(
        policy(3, "5xx", None),
        &[Step::Status(500), Step::Status(200)],
        budget,
    )
    .await;
    assert_eq!(got, Ok(500));
    assert_eq!(calls, 1);
}

#[test]
fn backoff_is_bounded_and_jittered() {
    let base = Duration::from_millis(25);
    let rng = Sequence::new(vec![u64::MAX - 1]);
    for (n, cap_ms) in [(0, 25), (1, 50), (2, 100), (3, 200), (4, 250), (30, 250)] {
        let got = backoff(base, n, &rng);
        assert!(got < Duration::from_millis(cap_ms), "retry {n}: {got:?}");
    }
    assert_eq!(backoff(base, 3, &Sequence::new(vec![0])), Duration::ZERO);
}

#[test]
fn from_config_defaults_to_istio_conditions() {
    let c: RetryConfig = crate::config::from_yaml("{attempts: 2}").expect("yaml");
    let p = RetryPolicy::from_config(&c);
    assert_eq!(p.retries, 2);
    assert_eq!(
        p.on,
        RetryOn {
            connect_failure: true,
            gateway_error: true,
            reset: true,
            ..RetryOn::default()
        }
    );
}
