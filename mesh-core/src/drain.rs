//! Graceful drain: a primitive every listener and long-lived task runs under.
//!
//! A [`DrainTrigger`] starts the drain; each task holds a [`DrainWatch`] and, when it sees the
//! drain start, stops accepting new work and finishes what it has. The trigger then waits until
//! every watch is dropped or the deadline passes, whichever comes first.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Starts a drain and waits for the watchers to finish.
#[derive(Debug)]
pub struct DrainTrigger {
    started: watch::Sender<bool>,
    // Every `DrainWatch` holds a clone of `done_tx`; `recv` returns `None` once all are dropped.
    done_rx: mpsc::Receiver<()>,
    done_tx: Option<mpsc::Sender<()>>,
}

/// Held by a task that must finish before the process exits.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    started: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watcher finished before the deadline.
    Complete,
    /// The deadline passed with watchers still running; they are abandoned.
    DeadlineExceeded,
}

/// Creates a linked trigger and its first watch.
pub fn channel() -> (DrainTrigger, DrainWatch) {
    let (started_tx, started_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    let watch = DrainWatch {
        started: started_rx,
        _done: done_tx.clone(),
    };
    let trigger = DrainTrigger {
        started: started_tx,
        done_rx,
        done_tx: Some(done_tx),
    };
    (trigger, watch)
}

impl DrainTrigger {
    /// A new watch on this trigger, for a task started later.
    pub fn watch(&self) -> DrainWatch {
        DrainWatch {
            started: self.started.subscribe(),
            // `done_tx` is only taken by `drain`, which consumes `self`.
            _done: self.done_tx.clone().expect("drain not yet started"),
        }
    }

    /// Signals every watch and waits up to `deadline` for all of them to be dropped.
    pub async fn drain(mut self, deadline: Duration) -> DrainOutcome {
        self.started.send_replace(true);
        self.done_tx = None;
        match tokio::time::timeout(deadline, self.done_rx.recv()).await {
            Ok(_) => DrainOutcome::Complete,
            Err(_) => DrainOutcome::DeadlineExceeded,
        }
    }
}

impl DrainWatch {
    /// Resolves once the drain has started (immediately if it already has).
    pub async fn signaled(&mut self) {
        // An error means the trigger was dropped without draining: treat that as a drain too,
        // so tasks never outlive their owner.
        let _ = self.started.wait_for(|started| *started).await;
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        *self.started.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_completes_when_watchers_finish() {
        let (trigger, mut watch) = channel();
        let worker = tokio::spawn(async move {
            watch.signaled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(watch);
        });
        let outcome = trigger.drain(Duration::from_secs(5)).await;
        assert_eq!(outcome, DrainOutcome::Complete);
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_deadline() {
        let (trigger, watch) = channel();
        let stuck = trigger.watch();
        drop(watch);
        let outcome = trigger.drain(Duration::from_secs(5)).await;
        assert_eq!(outcome, DrainOutcome::DeadlineExceeded);
        assert!(stuck.is_draining());
    }

    #[tokio::test]
    async fn watch_sees_drain_started_before_it_was_polled() {
        let (trigger, mut watch) = channel();
        let second = trigger.watch();
        drop(second);
        let drain = tokio::spawn(trigger.drain(Duration::from_secs(5)));
        watch.signaled().await;
        assert!(watch.is_draining());
        drop(watch);
        assert_eq!(drain.await.unwrap(), DrainOutcome::Complete);
    }
}
