//! Waiting for a condition (never a bare sleep in its place), and free ports.

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_for(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `condition` until it holds, or panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// [`wait_until`] for code outside an async runtime.
pub fn wait_until_blocking(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Polls `check` until it returns `Some`, or returns `None` after `timeout`:
/// for callers that report a timeout rather than panic (the chaos suite).
pub async fn poll_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Finds a free loopback port outside the ephemeral range, so parallel tests
/// and outgoing connections do not collide with it.
pub fn free_port() -> u16 {
    free_port_block(1)
}

/// `n` consecutive free loopback ports; returns the first. Ports handed out
/// are never handed out again by this process, so tests running in parallel
/// threads get disjoint ports; the process id spreads test binaries apart.
pub fn free_port_block(n: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 500) as u16 * 20;
    loop {
        let offset = NEXT.fetch_add(n, Ordering::Relaxed) % 10_000;
        let first = 20_000 + (base + offset) % 10_000;
        if first + n > 30_000 {
            continue;
        }
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", first + i)).is_ok()) {
            return first;
        }
    }
}
