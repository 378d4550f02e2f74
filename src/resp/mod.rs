//! The RESP port (`--resp-listen`): the Redis protocol, RESP2 and RESP3, so
//! that any Redis client reads and writes records.
//!
//! Flow: `connections::limited` accepts (at most `--max-connections` open on
//! this port, `TCP_NODELAY`) → the client port's TLS, when it has one (the caller is
//! the client certificate's identity, checked against the same roles as a
//! gRPC call) → `conn.rs` reads and pipelines commands → `session.rs`
//! (connection commands) and `records.rs` map each to the record API (`api::InFlightService`), which validates,
//! authorizes and proposes exactly as it does for gRPC → `reply.rs` writes
//! the answers. `parse.rs` says why the request parser is ours.

mod commands;
mod conn;
mod cursors;
mod introspect;
mod parse;
mod pubsub;
mod records;
mod reply;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use tokio::net::TcpListener;

use crate::api::InFlightService;
use crate::auth::Caller;
use crate::shutdown::Shutdown;
use crate::tls::ServerTls;

pub use parse::{MAX_ARRAY_LEN, MAX_LINE_BYTES};

/// Arguments in one command, at most (a `MGET` or `DEL` of this many keys).
pub const MAX_ARGS: usize = 4096;

/// Serves the RESP port until `stop`.
pub async fn serve(
    listener: TcpListener,
    svc: InFlightService,
    tls: Option<ServerTls>,
    max_connections: usize,
    stop: Shutdown,
) {
    let limits = parse::Limits {
        // A key, a value, and the options of a SET: the value limit bounds
        // every argument; the command as a whole may hold MAX_ARGS keys.
        max_bulk_bytes: svc.limits().max_value_bytes.max(crate::api::MAX_KEY_BYTES),
        max_args: MAX_ARGS,
        max_command_bytes: (svc.limits().max_value_bytes + (1 << 20))
            .max(MAX_ARGS * crate::api::MAX_KEY_BYTES),
    };
    let shared = Arc::new(session::Shared {
        svc,
        cursors: cursors::Cursors::default(),
        next_client_id: AtomicU64::new(1),
    });
    let incoming = crate::connections::limited(listener, max_connections);
    let spawn = |io, caller: Caller, peer: String| {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        let session = session::Session::new(id, caller, peer);
        tokio::spawn(conn::serve(
            shared.clone(),
            io,
            session,
            limits,
            stop.clone(),
        ));
    };
    let mut until = stop.clone();
    match tls {
        None => {
            let mut incoming = std::pin::pin!(incoming.take_until(until.requested()));
            while let Some(c) = incoming.next().await {
                match c {
                    Ok(c) => {
                        let peer = peer_of(&c);
                        spawn(Box::new(c) as Box<dyn Io>, Caller::Anonymous, peer);
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
        }
        Some(tls) => {
            let incoming = crate::tls::TlsIncoming::new(incoming, tls);
            let mut incoming = std::pin::pin!(incoming.take_until(until.requested()));
            while let Some(c) = incoming.next().await {
                match c {
                    Ok(c) => {
                        let caller = match c.get_ref().1.peer_certificates().and_then(|p| p.first())
                        {
                            Some(leaf) => Caller::from_leaf(leaf),
                            None => Caller::Anonymous,
                        };
                        let peer = peer_of(c.get_ref().0);
                        spawn(Box::new(c) as Box<dyn Io>, caller, peer);
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
        }
    }
}

/// An accept that failed (out of file descriptors, say) is logged and
/// tried again after a pause, not at once in a loop.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "RESP port: accepting a connection failed; retrying in 100 ms");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

fn peer_of(c: &crate::connections::Counted) -> String {
    use tonic::transport::server::Connected;
    c.connect_info()
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}
