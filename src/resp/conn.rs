//! One RESP connection: read what the client sent, run its commands, write
//! the answers in the order of the commands.
//!
//! Pipelining: every command already in the input buffer is parsed before
//! anything is answered. Record commands on distinct keys run together (a
//! "wave"), so a pipeline of N writes meets in one proposal batch and N
//! LINEARIZABLE reads in one ReadIndex round (`raft::batch`), as a session
//! frame's ops do; the writes of a wave reach the proposer in the order
//! sent. A command on a key the wave already touches, a scan or `EXEC`
//! (they touch many keys), a read-then-write (a plain `SET`, `SET ... GET`,
//! `EXPIRE`, `PEXPIRE`, `PERSIST`: its write would otherwise be proposed
//! after later writes of the pipeline), and every connection command
//! (`HELLO`, `CONSISTENCY`, `INFO`, ...) wait until the wave before them is
//! answered, and a read-then-write runs alone. So a connection's writes
//! apply in the order it sent them, and it sees its own commands take
//! effect in that order. Answers are written as they pile up (every 64
//! KiB) and at the end of each read of input.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::parse::{Limits, Parsed, Parser};
use super::pubsub::{Delivery, Subscriptions};
use super::reply::Reply;
use super::session::{Session, Shared, Step};
use crate::shutdown::Shutdown;

/// Commands of one wave, at most: past this the wave is answered first.
/// With the value limit, it bounds what one connection's answers hold
/// (128 answers of up to 1 MiB by default) before they are written.
const MAX_WAVE: usize = 128;
/// Answers buffered before they are written, whatever is still to come.
const FLUSH_BYTES: usize = 64 * 1024;
/// A client that takes none of its answers (or subscription messages) for
/// this long is cut off: the connection closes, and what was held for it
/// is freed.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The commands of a pipeline that run together.
struct Wave {
    replies: FuturesOrdered<futures::future::BoxFuture<'static, Reply>>,
    keys: HashSet<String>,
    /// A command of the wave touches every key (a scan, `EXEC`) or must run
    /// alone (a read-then-write).
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
}

/// The writing side of a connection: the answers not yet written, and the
/// wave whose answers are still to come.
struct Output<W> {
    wr: W,
    out: BytesMut,
    wave: Wave,
    stop: Shutdown,
}

/// Why a connection ends early.
enum End {
    /// The node stops, or the client stopped reading or went away.
    Gone,
}

impl<W: AsyncWrite + Unpin> Output<W> {
    /// Appends an answer; writes once enough is buffered.
    async fn answer(&mut self, r: Reply, resp3: bool) -> Result<(), End> {
        r.encode(resp3, &mut self.out);
        if self.out.len() >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for every answer of the wave, in order, writing them as they
    /// pile up, so that no more than a wave and `FLUSH_BYTES` are held.
    async fn finish(&mut self, resp3: bool) -> Result<(), End> {
        loop {
            let next = tokio::select! {
                r = self.wave.replies.next() => r,
                _ = self.stop.requested() => return Err(End::Gone),
            };
            match next {
                Some(r) => self.answer(r, resp3).await?,
                None => break,
            }
        }
        self.wave.keys.clear();
        self.wave.all = false;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = async {
            self.wr.write_all(&self.out).await?;
            self.wr.flush().await
        };
        let done = tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, written) => matches!(r, Ok(Ok(()))),
            _ = self.stop.requested() => false,
        };
        self.out.clear();
        if done {
            Ok(())
        } else {
            Err(End::Gone)
        }
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
    let (mut rd, wr) = tokio::io::split(io);
    let mut parser = Parser::new(limits);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut o = Output {
        wr,
        out: BytesMut::with_capacity(16 * 1024),
        wave: Wave::new(),
        stop: stop.clone(),
    };
    let mut subs = Subscriptions::default();
    loop {
        let read = tokio::select! {
            r = rd.read_buf(&mut input) => r,
            d = subs.next(), if !subs.is_empty() => {
                let open = match d {
                    Delivery::Messages(m) => {
                        let mut r = Ok(());
                        for reply in m {
                            r = r.and(o.answer(reply, session.resp3).await);
                        }
                        r.is_ok()
                    }
                    Delivery::Ended(e) => {
                        let _ = o.answer(e, session.resp3).await;
                        false
                    }
                };
                if o.flush().await.is_err() || !open {
                    return;
                }
                continue;
            }
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
        match run_input(
            &shared,
            &mut session,
            &mut subs,
            &mut parser,
            &mut input,
            &mut o,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                let _ = o.wr.shutdown().await;
                return;
            }
            Err(End::Gone) => return,
        }
    }
}

/// Runs every command in `input`; `Ok(false)`: the connection is to close
/// once answered (`QUIT`, or bytes that are not RESP).
async fn run_input<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    session: &mut Session,
    subs: &mut Subscriptions,
    parser: &mut Parser,
    input: &mut BytesMut,
    o: &mut Output<W>,
) -> Result<bool, End> {
    let mut open = true;
    loop {
        let parsed = match parser.next(input) {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                // Not RESP: answer what came before, say why, close.
                o.finish(session.resp3).await?;
                o.answer(Reply::err(format!("ERR {e}")), session.resp3)
                    .await?;
                open = false;
                break;
            }
        };
        let args = match parsed {
            Parsed::Command(args) if args.is_empty() => continue,
            Parsed::Command(args) => args,
            Parsed::Refused(why) => {
                o.finish(session.resp3).await?;
                o.answer(Reply::err(why), session.resp3).await?;
                continue;
            }
        };
        // A connection command sees (and may change) the state after
        // every command before it.
        if !session.is_record_command(&args[0]) {
            o.finish(session.resp3).await?;
        }
        // Redis's rule for a RESP2 connection with subscriptions: its input
        // is about them, since every reply would be mixed with messages.
        if !session.resp3 && !subs.is_empty() {
            if let Some(r) = subscribed_only(&args) {
                o.answer(r, false).await?;
                continue;
            }
        }
        match session.run(shared, args) {
            Step::Now(r) => {
                o.finish(session.resp3).await?;
                o.answer(r, session.resp3).await?;
            }
            Step::Close(r) => {
                o.finish(session.resp3).await?;
                o.answer(r, session.resp3).await?;
                open = false;
                break;
            }
            Step::Subscribe(prefixes, from) => {
                o.finish(session.resp3).await?;
                for r in subs.subscribe(shared, session, prefixes, from) {
                    o.answer(r, session.resp3).await?;
                }
            }
            Step::Unsubscribe(prefixes) => {
                o.finish(session.resp3).await?;
                for r in subs.unsubscribe(prefixes) {
                    o.answer(r, session.resp3).await?;
                }
            }
            Step::Keys(keys, reply) => {
                if o.wave.conflicts(&keys) {
                    o.finish(session.resp3).await?;
                }
                match keys {
                    None => o.wave.all = true,
                    Some(ks) => o.wave.keys.extend(ks),
                }
                o.wave.replies.push_back(reply);
            }
        }
    }
    o.finish(session.resp3).await?;
    o.flush().await?;
    Ok(open)
}

/// On a RESP2 connection with subscriptions: the answer to a command that
/// is not about them (a refusal, or `PING`'s subscribed form), or `None`
/// to run it.
fn subscribed_only(args: &[bytes::Bytes]) -> Option<Reply> {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    match name.as_str() {
        "SUBSCRIBE" | "UNSUBSCRIBE" | "WATCH.PREFIX" | "QUIT" => None,
        "PING" => Some(Reply::Array(vec![
            Reply::text("pong"),
            Reply::Bulk(args.get(1).cloned().unwrap_or_default()),
        ])),
        _ => Some(Reply::err(format!(
            "ERR Can't execute '{}': only SUBSCRIBE / UNSUBSCRIBE / WATCH.PREFIX / PING / QUIT \
             are allowed in this context",
            name.to_ascii_lowercase()
        ))),
    }
}
