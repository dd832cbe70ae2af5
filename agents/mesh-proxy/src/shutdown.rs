//! Graceful shutdown of the data plane: every connection task is tracked; when shutdown begins
//! listeners stop accepting, HTTP connections finish their in-flight requests and close, and
//! whatever is still open when the grace period ends is cut.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by the listeners and their connection tasks.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    draining: CancellationToken,
    cut: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Cancelled when shutdown begins: HTTP connections then stop taking new requests.
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// Runs a connection task that the drain waits for and cuts at the end of the grace period.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cut = self.cut.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = cut.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Begins shutdown and waits up to `grace` for the tracked tasks; returns whether they all
    /// finished in time (the rest are cut).
    pub async fn drain(&self, grace: Duration) -> bool {
        self.draining.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        if !finished {
            tracing::warn!(open = self.tracker.len(), ?grace, "shutdown grace period over; closing open connections");
            self.cut.cancel();
            self.tracker.wait().await;
        }
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_that_finish_within_the_grace_period() {
        let drain = Drain::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let draining = drain.draining().clone();
        drain.spawn(async move {
            draining.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = done_tx.send(());
        });
        assert!(drain.drain(Duration::from_secs(5)).await);
        done_rx.await.expect("the task ran to completion");
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_tasks_after_the_grace_period() {
        let drain = Drain::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        drain.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = done_tx.send(());
        });
        assert!(!drain.drain(Duration::from_secs(5)).await);
        assert!(done_rx.await.is_err(), "the task was cut before it could finish");
    }
}
