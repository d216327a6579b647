//! Supervision of a forwarder task: one that dies (panics, or ends before shutdown) is
//! started again with a capped exponential backoff, counted in
//! [`ForwardHealth::restarts`], and marked not running meanwhile (readiness fails).
//!
//! Restarting is safe because a forwarder keeps no state that matters between runs: it
//! starts from the cursor the spool holds, and progress it reported before dying is
//! committed by the writer like any other. The batch it had in flight is sent again.

use super::forwarder::ForwardHealth;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The waits before a restart: the first, doubling up to the cap.
#[derive(Debug, Clone, Copy)]
pub struct RestartDelays {
    pub first: Duration,
    pub max: Duration,
}

impl Default for RestartDelays {
    fn default() -> Self {
        RestartDelays {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Runs the task that `start` builds until `cancel` fires, restarting it when it dies.
/// `start` fails (e.g. the spool cannot be opened) → retried with the same backoff.
pub async fn supervise<S, SF, T>(
    what: String,
    health: Arc<ForwardHealth>,
    cancel: CancellationToken,
    delays: RestartDelays,
    mut start: S,
) where
    S: FnMut() -> SF,
    SF: Future<Output = Result<T, String>>,
    T: Future<Output = ()> + Send + 'static,
{
    let mut delay = delays.first.min(delays.max);
    loop {
        match start().await {
            Ok(task) => {
                health.running.store(true, Ordering::Relaxed);
                let ended = tokio::spawn(task).await;
                health.running.store(false, Ordering::Relaxed);
                match ended {
                    Ok(()) if cancel.is_cancelled() => return,
                    Ok(()) => {
                        tracing::error!(forwarder = %what, restart_in = ?delay, "forwarder ended before shutdown; restarting it (events stay in the spool)");
                    }
                    Err(e) => {
                        let why = panic_text(e);
                        if cancel.is_cancelled() {
                            tracing::error!(forwarder = %what, error = %why, "forwarder panicked during shutdown; its batch is sent again at the next start");
                            return;
                        }
                        tracing::error!(forwarder = %what, error = %why, restart_in = ?delay, "forwarder died; restarting it (events stay in the spool, the batch in flight is sent again)");
                    }
                }
            }
            Err(e) => {
                health.running.store(false, Ordering::Relaxed);
                tracing::error!(forwarder = %what, error = %e, restart_in = ?delay, "cannot start the forwarder; trying again");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
        health.restarts.fetch_add(1, Ordering::Relaxed);
        delay = (delay * 2).min(delays.max);
    }
}

/// What a task's panic said.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    const QUICK: RestartDelays = RestartDelays {
        first: Duration::from_millis(20),
        max: Duration::from_millis(80),
    };

    async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A task that panics twice is restarted, counted, marked down meanwhile, and runs
    /// on the third start until shutdown; shutdown does not restart it.
    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_counted() {
        let health = Arc::new(ForwardHealth::default());
        let cancel = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(8);
        let sup = {
            let (health, cancel, starts) = (health.clone(), cancel.clone(), starts.clone());
            tokio::spawn(supervise(
                "test".into(),
                health,
                cancel.clone(),
                QUICK,
                move || {
                    let n = starts.fetch_add(1, Ordering::SeqCst);
                    let (cancel, tx) = (cancel.clone(), tx.clone());
                    async move {
                        Ok(async move {
                            let _ = tx.send(n >= 2).await;
                            if n < 2 {
                                panic!("injected failure {n}");
                            }
                            cancel.cancelled().await;
                        })
                    }
                },
            ))
        };
        assert_eq!(rx.recv().await, Some(false));
        assert_eq!(rx.recv().await, Some(false));
        assert_eq!(rx.recv().await, Some(true), "the third start runs");
        wait_for("running", || health.running.load(Ordering::Relaxed)).await;
        assert_eq!(health.restarts.load(Ordering::Relaxed), 2);
        cancel.cancel();
        sup.await.unwrap();
        assert!(!health.running.load(Ordering::Relaxed));
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "not restarted at shutdown"
        );
    }

    /// While a dead task waits for its restart it is marked not running (readiness
    /// fails), and the waits grow.
    #[tokio::test]
    async fn a_dead_task_is_down_until_restarted_and_waits_grow() {
        let health = Arc::new(ForwardHealth::default());
        let cancel = CancellationToken::new();
        let stamps = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        let delays = RestartDelays {
            first: Duration::from_millis(100),
            max: Duration::from_millis(400),
        };
        let sup = {
            let (health, stamps) = (health.clone(), stamps.clone());
            tokio::spawn(supervise(
                "test".into(),
                health,
                cancel.clone(),
                delays,
                move || {
                    stamps.lock().unwrap().push(Instant::now());
                    async move { Ok(async { panic!("always") }) }
                },
            ))
        };
        wait_for("4 starts", || stamps.lock().unwrap().len() >= 4).await;
        assert!(!health.running.load(Ordering::Relaxed));
        let t = stamps.lock().unwrap().clone();
        // Each wait is at least its delay: 100, 200, 400 ms.
        for (i, want) in [100u64, 200, 400].iter().enumerate() {
            let gap = t[i + 1] - t[i];
            assert!(gap >= Duration::from_millis(*want), "wait {i}: {gap:?}");
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), sup)
            .await
            .expect("supervision ends at once on shutdown")
            .unwrap();
    }

    /// A task that returns before shutdown is restarted too, and one that fails to
    /// start is tried again.
    #[tokio::test]
    async fn an_early_end_or_a_failed_start_is_retried() {
        let health = Arc::new(ForwardHealth::default());
        let cancel = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let sup = {
            let (health, starts) = (health.clone(), starts.clone());
            tokio::spawn(supervise(
                "test".into(),
                health,
                cancel.clone(),
                QUICK,
                move || {
                    let n = starts.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n % 2 == 0 {
                            Err("cannot open the spool".to_string())
                        } else {
                            Ok(async {})
                        }
                    }
                },
            ))
        };
        wait_for("5 starts", || starts.load(Ordering::SeqCst) >= 5).await;
        assert!(health.restarts.load(Ordering::Relaxed) >= 4);
        cancel.cancel();
        sup.await.unwrap();
    }
}
