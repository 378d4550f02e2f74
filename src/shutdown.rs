//! Explicit shutdown: a signal every long-running task listens to, and an
//! owner that waits for the tasks it started.
//!
//! Every task a node spawns belongs to a [`Tasks`] set. Stopping a set sends
//! its [`Shutdown`] signal, then joins every task in it; a task that has not
//! finished by the deadline is aborted and named in the log, so a hang on the
//! way out is visible, never silent. The node stops its sets in order (see
//! `crate::node`): first the leader's duties (the hand-off worker finishes its
//! batch), then the listeners, then Raft.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

/// The stop signal as a task sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A signal that never fires (for tools and tests that run a duty alone).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Keep the channel open for the life of the process: a closed channel
        // would count as a shutdown.
        std::mem::forget(tx);
        Shutdown { rx }
    }

    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is requested (or the owner is gone).
    pub async fn requested(&mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// A future that resolves once shutdown is requested, owning its signal:
    /// for `take_until` on the long-lived response streams, which must end
    /// for a server's graceful stop to finish.
    pub async fn into_requested(mut self) {
        self.requested().await
    }

    /// Sleeps for `d`; returns true if shutdown was requested meanwhile.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_requested(),
            _ = self.requested() => true,
        }
    }
}

/// A named set of tasks with one stop signal.
pub struct Tasks {
    name: &'static str,
    tx: watch::Sender<bool>,
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    pub fn new(name: &'static str) -> Tasks {
        let (tx, _) = watch::channel(false);
        Tasks {
            name,
            tx,
            set: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// The signal the tasks of this set stop on.
    pub fn signal(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// Starts `task` as a member of this set.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Resolves when any task of the set ends on its own (with its name), or
    /// never if the set is empty. For tasks whose end means the node must
    /// stop, such as the gRPC server.
    pub async fn any_ended(&mut self) -> &'static str {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => self.names.remove(&id).unwrap_or("?"),
            Some(Err(e)) => {
                let name = self.names.remove(&e.id()).unwrap_or("?");
                tracing::error!(task = name, error = %e, "task failed");
                name
            }
            None => std::future::pending().await,
        }
    }

    /// Sends the stop signal and waits up to `deadline` for every task; the
    /// ones still running then are aborted and logged by name.
    pub async fn stop(mut self, deadline: Duration) {
        self.tx.send_replace(true);
        let joined = tokio::time::timeout(deadline, async {
            while let Some(r) = self.set.join_next_with_id().await {
                let id = match &r {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                let name = self.names.remove(&id).unwrap_or("?");
                if let Err(e) = r {
                    tracing::warn!(set = self.name, task = name, error = %e, "task failed while stopping");
                }
            }
        })
        .await;
        if joined.is_err() {
            let left: Vec<&str> = self.names.values().copied().collect();
            tracing::warn!(set = self.name, tasks = ?left, ?deadline, "tasks did not stop in time; aborting them");
            self.set.shutdown().await;
        }
    }
}

/// Resolves when the process is asked to stop.
pub async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_signals_every_task_and_waits_for_it_to_finish() {
        let mut tasks = Tasks::new("test");
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..3 {
            let mut signal = tasks.signal();
            let finished = finished.clone();
            tasks.spawn("waiter", async move {
                signal.requested().await;
                // Work done after the signal still completes before stop returns.
                tokio::task::yield_now().await;
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        tasks.stop(Duration::from_secs(5)).await;
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_aborted_at_the_deadline() {
        let mut tasks = Tasks::new("test");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("stubborn", async move {
            let _keep = tx; // dropped when the task is aborted
            std::future::pending::<()>().await;
        });
        tasks.stop(Duration::from_millis(50)).await;
        // The sender was dropped by the abort, so the receiver sees it closed.
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn sleep_returns_early_when_shutdown_is_requested() {
        let tasks = Tasks::new("test");
        let mut signal = tasks.signal();
        let sleeper = tokio::spawn(async move { signal.sleep(Duration::from_secs(3600)).await });
        tasks.stop(Duration::from_secs(1)).await;
        assert!(sleeper.await.unwrap());
    }
}
