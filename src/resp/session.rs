//! One connection's state and the commands about the connection: `HELLO`,
//! `CLIENT`, `SELECT`, `CONSISTENCY`, `REQID`, `MULTI`/`EXEC`. Record
//! commands are in `records.rs`, `COMMAND` and `INFO` in `introspect.rs`.
//!
//! A command is either about the connection, answered at once in the order
//! sent, or about records ([`Step::Keys`]), run as a future that `conn.rs`
//! lets overlap with its neighbours in a pipeline when they touch other
//! keys.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::cursors::Cursors;
use super::introspect::{command_info, info};
use super::records::{arity, error, key, number, record_of, version, SetMode, SetOptions};
use super::reply::Reply;
use crate::api::InFlightService;
use crate::auth::Caller;
use crate::pb;

/// What every connection of a port shares.
pub struct Shared {
    pub svc: InFlightService,
    pub cursors: Cursors,
    pub next_client_id: std::sync::atomic::AtomicU64,
}

/// One connection's settings, changed by its commands.
pub struct Session {
    pub id: u64,
    pub name: Option<Bytes>,
    pub resp3: bool,
    pub caller: Caller,
    pub peer: String,
    pub(super) consistency: pb::Consistency,
    pub(super) max_staleness_ms: Option<u64>,
    /// `REQID`: the request id of the next write.
    pub(super) request_id: Option<String>,
    /// Commands queued by `MULTI`.
    pub(super) multi: Option<Multi>,
    /// The `REQID` of the write command being run: taken from `request_id`
    /// as the command starts, so that a command that fails (or is refused
    /// before it reaches the log) uses it up rather than leaving it for the
    /// next write.
    pub(super) pending_id: Option<String>,
}

/// A `MULTI` block being queued: one atomic batch, within the batch limits
/// as it grows (not only at `EXEC`), so queuing cannot hold more than a
/// batch may.
#[derive(Default)]
pub(super) struct Multi {
    ops: Vec<pb::BatchOp>,
    kinds: Vec<Kind>,
    value_bytes: usize,
    /// A command was refused while queuing: `EXEC` answers EXECABORT, and
    /// nothing more is kept.
    failed: bool,
}

/// What a command turned into.
pub enum Step {
    /// Answered already.
    Now(Reply),
    /// Answered, then the connection closes (`QUIT`).
    Close(Reply),
    /// Work on these keys (all of them, for a scan or `EXEC`: `None`).
    Keys(Option<Vec<String>>, BoxFuture<'static, Reply>),
    /// Watch these prefixes from this revision (0: the next change) on
    /// (`pubsub`).
    Subscribe(Vec<String>, u64),
    /// Stop watching these prefixes (all, if none).
    Unsubscribe(Vec<String>),
}

/// The reply shape of a write queued in `MULTI`.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Ok,
    Version,
    One,
}

impl Session {
    pub fn new(id: u64, caller: Caller, peer: String) -> Session {
        Session {
            id,
            name: None,
            resp3: false,
            caller,
            peer,
            consistency: pb::Consistency::Linearizable,
            max_staleness_ms: None,
            request_id: None,
            multi: None,
            pending_id: None,
        }
    }

    /// Whether `name` is a record command that may join a pipeline's wave
    /// (outside `MULTI`, every other command waits for the wave before it).
    pub fn is_record_command(&self, name: &[u8]) -> bool {
        self.multi.is_none() && super::commands::find(name).is_some_and(|c| c.record)
    }

    /// Turns one command into a [`Step`].
    pub fn run(&mut self, shared: &Arc<Shared>, args: Vec<Bytes>) -> Step {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let a = &args[1..];
        if self.multi.is_some()
            && !matches!(
                name.as_str(),
                "EXEC" | "DISCARD" | "MULTI" | "WATCH" | "QUIT"
            )
        {
            let max_value_bytes = shared.svc.limits().max_value_bytes;
            return Step::Now(self.queue(&name, a, max_value_bytes));
        }
        self.pending_id =
            if super::commands::find(name.as_bytes()).is_some_and(|c| c.takes_request_id) {
                self.request_id.take()
            } else {
                None
            };
        match self.connection_command(shared, &name, a) {
            Some(step) => step,
            None => match self.record_command(shared, &name, a) {
                Ok(step) => step,
                Err(reply) => Step::Now(reply),
            },
        }
    }

    fn connection_command(
        &mut self,
        shared: &Arc<Shared>,
        name: &str,
        a: &[Bytes],
    ) -> Option<Step> {
        let reply = match name {
            "PING" => match a {
                [] => Reply::Simple("PONG"),
                [m] => Reply::bulk(m.clone()),
                _ => arity(name),
            },
            "ECHO" => match a {
                [m] => Reply::bulk(m.clone()),
                _ => arity(name),
            },
            "QUIT" => return Some(Step::Close(Reply::OK)),
            "HELLO" => self.hello(shared, a),
            "AUTH" => Reply::err(
                "ERR AUTH: this port has no passwords; a client is identified by its TLS \
                 certificate (--client-cert-file on the node's client port)",
            ),
            "SELECT" => match a {
                [db] if db.as_ref() == b"0" => Reply::OK,
                [_] => Reply::err("ERR DB index is out of range (inflight has database 0 only)"),
                _ => arity(name),
            },
            "CLIENT" => self.client(a),
            "COMMAND" => command_info(a),
            "INFO" => info(&shared.svc, a),
            "DBSIZE" if a.is_empty() => Reply::Int(shared.svc.node().table().len() as i64),
            "DBSIZE" => arity(name),
            "CONSISTENCY" => self.set_consistency(a),
            "REQID" => match a {
                [id] => match std::str::from_utf8(id) {
                    Ok(id) if !id.is_empty() => {
                        self.request_id = Some(id.to_string());
                        Reply::OK
                    }
                    _ => Reply::err("ERR REQID: the id must be non-empty UTF-8 text"),
                },
                _ => arity(name),
            },
            "MULTI" if self.multi.is_some() => Reply::err("ERR MULTI calls can not be nested"),
            "MULTI" => {
                self.multi = Some(Multi::default());
                Reply::OK
            }
            "DISCARD" => match self.multi.take() {
                Some(_) => Reply::OK,
                None => Reply::err("ERR DISCARD without MULTI"),
            },
            "SUBSCRIBE" if a.is_empty() => arity(name),
            "SUBSCRIBE" | "UNSUBSCRIBE" => {
                let prefixes = match a.iter().map(|p| prefix(name, p)).collect() {
                    Ok(p) => p,
                    Err(e) => return Some(Step::Now(e)),
                };
                return Some(if name == "SUBSCRIBE" {
                    Step::Subscribe(prefixes, 0)
                } else {
                    Step::Unsubscribe(prefixes)
                });
            }
            "WATCH.PREFIX" => {
                let (p, from) = match a {
                    [p] => (p, 0),
                    [p, from] => match number(from) {
                        Some(n) if n >= 0 => (p, n as u64),
                        _ => {
                            return Some(Step::Now(Reply::err(
                                "ERR WATCH.PREFIX: the revision must be a non-negative integer",
                            )))
                        }
                    },
                    _ => return Some(Step::Now(arity(name))),
                };
                return Some(match prefix(name, p) {
                    Ok(p) => Step::Subscribe(vec![p], from),
                    Err(e) => Step::Now(e),
                });
            }
            "PSUBSCRIBE" | "PUNSUBSCRIBE" | "SSUBSCRIBE" | "SUNSUBSCRIBE" => Reply::err(format!(
                "ERR {name}: channels here are key prefixes, not patterns; SUBSCRIBE call/ gets \
                 every change of a record under call/"
            )),
            "PUBLISH" | "SPUBLISH" => Reply::err(format!(
                "ERR {name}: a channel here carries the changes of the records under its prefix; \
                 write a record to publish"
            )),
            "WATCH" | "UNWATCH" => Reply::err(
                "ERR WATCH is not supported: make a MULTI block conditional with IF.SET and \
                 IF.DEL, which apply only at the version you read (all or nothing)",
            ),
            "EXEC" => return Some(self.exec(shared)),
            _ => return None,
        };
        Some(Step::Now(reply))
    }

    /// `HELLO [2|3 [AUTH ...] [SETNAME name]]`: nothing changes unless the
    /// whole command is valid.
    fn hello(&mut self, shared: &Arc<Shared>, a: &[Bytes]) -> Reply {
        let mut rest = a;
        let mut resp3 = self.resp3;
        let mut name = None;
        if let [v, tail @ ..] = a {
            match v.as_ref() {
                b"2" => resp3 = false,
                b"3" => resp3 = true,
                _ => return Reply::err("NOPROTO unsupported protocol version"),
            }
            rest = tail;
        }
        while let [opt, tail @ ..] = rest {
            match (opt.to_ascii_uppercase().as_slice(), tail) {
                (b"SETNAME", [n, tail @ ..]) => {
                    if let Err(e) = check_name(n) {
                        return e;
                    }
                    name = Some(n.clone());
                    rest = tail;
                }
                (b"AUTH", _) => {
                    return Reply::err(
                        "ERR AUTH: this port has no passwords; a client is identified by its TLS certificate",
                    )
                }
                _ => return Reply::err("ERR syntax error in HELLO"),
            }
        }
        self.resp3 = resp3;
        if name.is_some() {
            self.name = name.filter(|n| !n.is_empty());
        }
        let node = shared.svc.node();
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("inflight")),
            (
                Reply::text("version"),
                Reply::text(env!("CARGO_PKG_VERSION")),
            ),
            (
                Reply::text("proto"),
                Reply::Int(if self.resp3 { 3 } else { 2 }),
            ),
            (Reply::text("id"), Reply::Int(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (
                Reply::text("role"),
                Reply::text(if node.is_leader() {
                    "master"
                } else {
                    "replica"
                }),
            ),
            (Reply::text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client(&mut self, a: &[Bytes]) -> Reply {
        let Some(sub) = a.first() else {
            return arity("CLIENT");
        };
        match (sub.to_ascii_uppercase().as_slice(), &a[1..]) {
            (b"SETNAME", [n]) => match check_name(n) {
                Ok(()) => {
                    self.name = (!n.is_empty()).then(|| n.clone());
                    Reply::OK
                }
                Err(e) => e,
            },
            (b"GETNAME", []) => self.name.clone().map(Reply::Bulk).unwrap_or(Reply::Null),
            (b"ID", []) => Reply::Int(self.id as i64),
            (b"INFO", []) => Reply::text(format!(
                "id={} addr={} name={} db=0 resp={}\n",
                self.id,
                self.peer,
                self.name
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
                if self.resp3 { 3 } else { 2 }
            )),
            // Client libraries announce themselves; nothing to keep.
            (b"SETINFO", [_, _]) => Reply::OK,
            _ => Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for 'CLIENT {}'",
                String::from_utf8_lossy(sub)
            )),
        }
    }

    fn set_consistency(&mut self, a: &[Bytes]) -> Reply {
        let level = a.first().map(|l| l.to_ascii_lowercase());
        let (c, max) = match (level.as_deref(), &a[a.len().min(1)..]) {
            (Some(b"linearizable"), []) => (pb::Consistency::Linearizable, None),
            (Some(b"lease"), []) => (pb::Consistency::Lease, None),
            (Some(b"stale"), []) => (pb::Consistency::Stale, None),
            (Some(b"stale"), [ms]) => {
                match number(ms) {
                    Some(ms) if ms >= 0 => (pb::Consistency::Stale, Some(ms as u64)),
                    _ => return Reply::err(
                        "ERR CONSISTENCY stale: max-staleness-ms must be a non-negative integer",
                    ),
                }
            }
            _ => return Reply::err("ERR CONSISTENCY linearizable|lease|stale [max-staleness-ms]"),
        };
        self.consistency = c;
        self.max_staleness_ms = max;
        Reply::OK
    }

    /// The request id for the next write, taken.
    pub(super) fn take_request_id(&mut self) -> String {
        self.pending_id.take().unwrap_or_default()
    }

    /// A command that may not carry a request id (it is more than one write).
    pub(super) fn no_request_id(&mut self, name: &str) -> Result<(), Reply> {
        match self.pending_id.take() {
            None => Ok(()),
            Some(_) => Err(Reply::err(format!(
                "ERR REQID: {name} reads and then writes conditionally, so a retry could differ \
                 from the first attempt; REQID applies to SET NX, SET XX, IF.SET, IF.DEL, DEL of \
                 one key, COMPLETE and EXEC"
            ))),
        }
    }

    pub(super) fn get_request(&self, key: String) -> pb::GetRequest {
        pb::GetRequest {
            key,
            consistency: self.consistency as i32,
            max_staleness_ms: self.max_staleness_ms,
        }
    }

    /// A command inside `MULTI`: checked and queued as an op of the batch
    /// that `EXEC` proposes.
    fn queue(&mut self, name: &str, a: &[Bytes], max_value_bytes: usize) -> Reply {
        let op = queued_op(name, a);
        let Some(m) = self.multi.as_mut() else {
            return Reply::err("ERR internal: no MULTI");
        };
        let refuse = |m: &mut Multi, e: Reply| {
            // Nothing more is kept: EXEC will only say EXECABORT.
            *m = Multi {
                failed: true,
                ..Multi::default()
            };
            e
        };
        match op {
            Ok((op, kind)) => {
                if m.failed {
                    return Reply::Simple("QUEUED");
                }
                let bytes = m.value_bytes + batch_op_value_bytes(&op);
                let max_bytes = max_value_bytes.saturating_mul(crate::api::BATCH_VALUE_FACTOR);
                if m.ops.len() >= crate::api::MAX_BATCH_OPS {
                    return refuse(
                        m,
                        Reply::err(format!(
                            "ERR MULTI: more than {} commands in one block (a block is one batch)",
                            crate::api::MAX_BATCH_OPS
                        )),
                    );
                }
                if bytes > max_bytes {
                    return refuse(
                        m,
                        Reply::err(format!(
                            "ERR MULTI: values total {bytes} bytes, over the batch limit of {max_bytes} bytes"
                        )),
                    );
                }
                m.ops.push(op);
                m.kinds.push(kind);
                m.value_bytes = bytes;
                Reply::Simple("QUEUED")
            }
            Err(e) => refuse(m, e),
        }
    }

    fn exec(&mut self, shared: &Arc<Shared>) -> Step {
        let Some(Multi {
            ops, kinds, failed, ..
        }) = self.multi.take()
        else {
            return Step::Now(Reply::err("ERR EXEC without MULTI"));
        };
        if failed {
            return Step::Now(Reply::err(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
        }
        if ops.is_empty() {
            return Step::Now(Reply::Array(Vec::new()));
        }
        let sh = shared.clone();
        let caller = self.caller.clone();
        let req = pb::BatchRequest {
            ops,
            request_id: self.take_request_id(),
        };
        Step::Keys(
            None,
            async move {
                match sh.svc.batch(&caller, req).await {
                    Ok(b) => Reply::Array(
                        b.results
                            .into_iter()
                            .zip(kinds)
                            .map(|(m, kind)| match kind {
                                Kind::Ok => Reply::OK,
                                Kind::One => Reply::Int(1),
                                Kind::Version => Reply::Int(record_of(m).version as i64),
                            })
                            .collect(),
                    ),
                    Err(e) => error(e),
                }
            }
            .boxed(),
        )
    }
}

/// The ops `MULTI` accepts: those that are one write each, whatever the
/// state (a plain `SET` is a read and a write, so it cannot join a batch).
fn queued_op(name: &str, a: &[Bytes]) -> Result<(pb::BatchOp, Kind), Reply> {
    use pb::batch_op::Op;
    let (op, kind) =
        match name {
            "SET" => {
                let o = SetOptions::parse(a)?;
                if o.get {
                    return Err(Reply::err(
                        "ERR SET ... GET cannot be queued in MULTI: it reads",
                    ));
                }
                match o.mode {
                    SetMode::Insert => (
                        Op::Insert(pb::InsertRequest {
                            key: o.key,
                            value: o.value.to_vec(),
                            ttl_ms: o.ttl.ms(),
                            request_id: String::new(),
                        }),
                        Kind::Ok,
                    ),
                    SetMode::Update => (Op::Update(o.update(None, String::new())), Kind::Ok),
                    SetMode::Upsert => return Err(Reply::err(
                        "ERR a SET without NX or XX cannot be queued in MULTI: it is a read and a \
                         conditional write; use SET NX (insert) or SET XX (update)",
                    )),
                }
            }
            "IF.SET" => {
                let [k, v, value] = a else {
                    return Err(arity(name));
                };
                (
                    Op::Update(pb::UpdateRequest {
                        key: key(k)?,
                        value: value.to_vec(),
                        if_version: Some(version(v)?),
                        ttl_ms: None,
                        clear_ttl: false,
                        request_id: String::new(),
                    }),
                    Kind::Version,
                )
            }
            "IF.DEL" | "DEL" => {
                let (k, v) = match (name, a) {
                    ("IF.DEL", [k, v]) => (k, Some(version(v)?)),
                    ("DEL", [k]) => (k, None),
                    ("DEL", _) => return Err(Reply::err("ERR DEL in MULTI takes one key")),
                    _ => return Err(arity(name)),
                };
                (
                    Op::Delete(pb::DeleteRequest {
                        key: key(k)?,
                        if_version: v,
                        request_id: String::new(),
                    }),
                    Kind::One,
                )
            }
            "COMPLETE" => {
                let (k, value) = match a {
                    [k] => (k, None),
                    [k, v] => (k, Some(v.to_vec())),
                    _ => return Err(arity(name)),
                };
                (
                    Op::Complete(pb::CompleteRequest {
                        key: key(k)?,
                        value,
                        if_version: None,
                        request_id: String::new(),
                    }),
                    Kind::Version,
                )
            }
            _ => {
                return Err(Reply::err(format!(
                    "ERR {name} cannot be queued in MULTI: a MULTI block is one atomic batch of \
                 writes (SET NX, SET XX, IF.SET, IF.DEL, DEL, COMPLETE)"
                )))
            }
        };
    Ok((pb::BatchOp { op: Some(op) }, kind))
}

fn batch_op_value_bytes(op: &pb::BatchOp) -> usize {
    use pb::batch_op::Op;
    match &op.op {
        Some(Op::Insert(r)) => r.value.len(),
        Some(Op::Update(r)) => r.value.len(),
        Some(Op::Complete(r)) => r.value.as_ref().map_or(0, Vec::len),
        Some(Op::Delete(_)) | None => 0,
    }
}

/// A client name, as Redis allows them: printable ASCII without spaces.
fn check_name(n: &[u8]) -> Result<(), Reply> {
    if n.iter().any(|b| *b <= b' ' || *b > b'~') {
        return Err(Reply::err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

/// A channel name: a key prefix, which must be UTF-8 text.
fn prefix(command: &str, p: &Bytes) -> Result<String, Reply> {
    String::from_utf8(p.to_vec()).map_err(|_| {
        Reply::err(format!(
            "ERR {command}: a channel is a key prefix and must be UTF-8 text"
        ))
    })
}
