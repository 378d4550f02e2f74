//! How many connections a listener serves at once.
//!
//! Every open connection costs a task, buffers and (for gRPC) up to
//! [`MAX_STREAMS_PER_CONNECTION`] streams, each of which may be decoding a
//! large message. Without a bound, a client that opens connections in a loop
//! (or a reconnect storm after a partition) can take the memory the node
//! needs to stay in the cluster. So accepted connections are counted, and
//! past the limit a new one is closed as soon as it is accepted (the peer
//! sees a reset and retries later), with a log line and
//! `inflight_connections_refused_total`; `inflight_connections_open` is the
//! gauge of those being served.
//!
//! Closing after `accept` rather than not accepting keeps the kernel's
//! backlog moving: a listener that stops accepting makes every new client
//! wait for a connect timeout instead of failing fast.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::METRICS;

/// The default of `--max-connections`: far above what a cluster's peers and
/// clients need (a peer keeps one connection to each other member, a client
/// library one per endpoint), far below the open-files limit a container
/// usually gets (1 Mi), so refusing comes before the process runs out of
/// file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// HTTP/2 streams one gRPC connection may have open at once (each unary
/// call, session and watch is one). tonic leaves this unlimited unless
/// told; hyper's own default is 200. A client past it waits for a stream to
/// end (HTTP/2 flow control), it is not refused. 256 leaves the Rust client
/// and the load generator (8 workers per connection) far below it, and
/// keeps one connection from holding thousands of requests being decoded.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// At most one "refused" log line per this interval; the counter has the rest.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The connections `listener` accepts, at most `max` open at once; past
/// that, new ones are closed as they arrive. For
/// `Server::serve_with_incoming*`.
///
/// Each is set to `TCP_NODELAY`: `Server::tcp_nodelay` only applies to
/// listeners tonic binds itself, not to an incoming stream like this one;
/// without it a response written in several small segments waits for the
/// client's delayed ACK (about 40 ms per request).
pub fn limited(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<Counted>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max));
    let refusals = Arc::new(Refusals::default());
    TcpListenerStream::new(listener).filter_map(move |conn| {
        let slots = slots.clone();
        let refusals = refusals.clone();
        async move {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            let Ok(slot) = slots.try_acquire_owned() else {
                refusals.refuse(&conn, max);
                return None;
            };
            if let Err(e) = conn.set_nodelay(true) {
                return Some(Err(e));
            }
            METRICS.connections_open.inc();
            Some(Ok(Counted {
                io: conn,
                _slot: slot,
            }))
        }
    })
}

/// Counts refusals and rate-limits their log lines.
#[derive(Default)]
struct Refusals {
    since_log: AtomicU64,
    last_log: parking_lot::Mutex<Option<Instant>>,
}

impl Refusals {
    /// Closes `conn` (dropping it resets it) and says so.
    fn refuse(&self, conn: &TcpStream, max: usize) {
        METRICS.connections_refused.inc();
        let n = self.since_log.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock();
        if last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
            *last = Some(Instant::now());
            self.since_log.store(0, Ordering::Relaxed);
            tracing::warn!(
                peer = ?conn.peer_addr().ok(),
                refused = n,
                max_connections = max,
                "connection refused: --max-connections are open (the count is refusals since the last such line)"
            );
        }
    }
}

/// An accepted connection that holds one of the listener's slots until it
/// is dropped.
pub struct Counted {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Counted {
    fn drop(&mut self) {
        METRICS.connections_open.dec();
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Reads until the server closes the connection (0 bytes or a reset).
    async fn closed_by_server(conn: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn past_the_limit_a_connection_is_closed_and_a_freed_slot_is_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(limited(listener, 2));
        let refused_before = METRICS.connections_refused.get();

        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let served_a = incoming.next().await.unwrap().unwrap();
        let served_b = incoming.next().await.unwrap().unwrap();
        assert!(served_a.io.nodelay().unwrap(), "Nagle is off");

        // The third is accepted and closed: the stream yields nothing for it.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let next = tokio::spawn(async move {
            let conn = incoming.next().await;
            (conn.map(|c| c.map(|c| c.io.peer_addr().ok())), incoming)
        });
        assert!(
            closed_by_server(&mut c).await,
            "the third connection is closed"
        );
        assert_eq!(METRICS.connections_refused.get(), refused_before + 1);

        // Once one served connection ends, a new one is served.
        drop(served_a);
        let d = TcpStream::connect(addr).await.unwrap();
        let (served_d, _incoming) = next.await.unwrap();
        assert_eq!(
            served_d.unwrap().unwrap(),
            Some(d.local_addr().unwrap()),
            "the connection after the freed slot is served"
        );
        drop(served_b);
    }
}
