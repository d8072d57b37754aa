//! Bounded polling: lab processes start asynchronously, so readiness is polled, never slept on.

use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Checks `done` (at least once) until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Repeats `attempt` (a `weft-lab-app get`, whose output starts with the HTTP status) until it
/// answers 200 or `limit` passes; returns the last attempt's result either way.
pub fn retry_until_200(
    limit: Duration,
    mut attempt: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let mut last = None;
    wait_until(limit, || {
        let result = attempt();
        let answered = matches!(&result, Ok(out) if out.starts_with("200"));
        last = Some(result);
        answered
    });
    last.unwrap_or_else(|| Err(anyhow::anyhow!("no attempt was made")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_as_soon_as_the_condition_holds() {
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
    }

    #[test]
    fn gives_up_at_the_limit_with_the_last_result() {
        let mut calls = 0;
        let last = retry_until_200(Duration::from_millis(250), || {
            calls += 1;
            Ok(format!("503 attempt {calls}"))
        });
        assert_eq!(last.unwrap(), format!("503 attempt {calls}"));
        assert!(calls >= 2, "retried before giving up");
    }
}
