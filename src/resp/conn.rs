//! One RESP connection: read what the client sent, run its commands, write
//! the answers in the order of the commands.
//!
//! Pipelining: every command already in the input buffer is parsed before
//! anything is answered. Record commands on distinct keys run together (a
//! "wave"), so a pipeline of N writes meets in one proposal batch and N
//! LINEARIZABLE reads in one ReadIndex round (`raft::batch`), as a session
//! frame's ops do. A command on a key the wave already touches, a scan or
//! `EXEC` (they touch many keys), and every connection command (`HELLO`,
//! `CONSISTENCY`, `INFO`, ...) wait until the wave before them is
//! answered, so each connection sees its own commands take effect in the
//! order it sent them. The answers of a read are written with one flush.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::parse::{Limits, Parsed, Parser};
use super::reply::Reply;
use super::session::{Session, Shared, Step};
use crate::shutdown::Shutdown;

/// Commands of one wave, at most: past this the wave is answered first.
const MAX_WAVE: usize = 1024;
/// Answers buffered before they are written, whatever is still to come.
const FLUSH_BYTES: usize = 64 * 1024;

/// The commands of a pipeline that run together.
struct Wave {
    replies: FuturesOrdered<futures::future::BoxFuture<'static, Reply>>,
    keys: HashSet<String>,
    /// A command of the wave touches every key (a scan, `EXEC`).
    all: bool,
}

impl Wave {
    fn new() -> Wave {
        Wave {
            replies: FuturesOrdered::new(),
            keys: HashSet::new(),
            all: false,
        }
    }

    fn conflicts(&self, keys: &Option<Vec<String>>) -> bool {
        if self.replies.is_empty() {
            return false;
        }
        match keys {
            None => true,
            Some(ks) => {
                self.all
                    || self.replies.len() >= MAX_WAVE
                    || ks.iter().any(|k| self.keys.contains(k))
            }
        }
    }

    /// Waits for every answer of the wave and appends them to `out`.
    async fn finish(&mut self, resp3: bool, out: &mut BytesMut) {
        while let Some(r) = self.replies.next().await {
            r.encode(resp3, out);
        }
        self.keys.clear();
        self.all = false;
    }
}

pub async fn serve<S>(
    shared: Arc<Shared>,
    io: S,
    mut session: Session,
    limits: Limits,
    mut stop: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut parser = Parser::new(limits);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut wave = Wave::new();
    loop {
        let read = tokio::select! {
            r = rd.read_buf(&mut input) => r,
            _ = stop.requested() => return,
        };
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "RESP connection read failed");
                return;
            }
        }
        let mut close = false;
        loop {
            let parsed = match parser.next(&mut input) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    // Not RESP: answer what came before, say why, close.
                    wave.finish(session.resp3, &mut out).await;
                    Reply::err(format!("ERR {e}")).encode(session.resp3, &mut out);
                    close = true;
                    break;
                }
            };
            let args = match parsed {
                Parsed::Command(args) if args.is_empty() => continue,
                Parsed::Command(args) => args,
                Parsed::Refused(why) => {
                    wave.finish(session.resp3, &mut out).await;
                    Reply::err(why).encode(session.resp3, &mut out);
                    continue;
                }
            };
            if !session.is_record_command(&args[0]) {
                wave.finish(session.resp3, &mut out).await;
            }
            match session.run(&shared, args) {
                Step::Now(r) => {
                    wave.finish(session.resp3, &mut out).await;
                    r.encode(session.resp3, &mut out);
                }
                Step::Close(r) => {
                    wave.finish(session.resp3, &mut out).await;
                    r.encode(session.resp3, &mut out);
                    close = true;
                    break;
                }
                Step::Keys(keys, reply) => {
                    if wave.conflicts(&keys) {
                        wave.finish(session.resp3, &mut out).await;
                    }
                    match keys {
                        None => wave.all = true,
                        Some(ks) => wave.keys.extend(ks),
                    }
                    wave.replies.push_back(reply);
                }
            }
            if out.len() >= FLUSH_BYTES && write(&mut wr, &mut out).await.is_err() {
                return;
            }
        }
        wave.finish(session.resp3, &mut out).await;
        if write(&mut wr, &mut out).await.is_err() || close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    wr.write_all(out).await?;
    wr.flush().await?;
    out.clear();
    Ok(())
}
