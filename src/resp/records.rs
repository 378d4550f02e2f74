//! Record commands: `GET`, `MGET`, `EXISTS`, `SET`, `DEL`, the TTL
//! commands, `SCAN`, and ours (`IF.SET`, `IF.DEL`, `COMPLETE`, `RECORD`),
//! in terms of the record API (`api::InFlightService`): the same
//! validation, limits, roles, batching and errors as a gRPC call, with
//! Redis's reply shapes and error prefixes.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;

use super::reply::Reply;
use super::session::{Session, Shared, Step};
use crate::api::{ApiError, InFlightService};
use crate::auth::{Caller, Operation, Target};
use crate::pb;
use crate::raft::LeaderWait;
use crate::state::Rejection;

/// Attempts of a read-then-conditional-write (plain `SET`, `EXPIRE`, ...)
/// before it gives up under contention on its key.
const CAS_ATTEMPTS: usize = 16;

impl Session {
    pub(super) fn record_command(
        &mut self,
        shared: &Arc<Shared>,
        name: &str,
        a: &[Bytes],
    ) -> Result<Step, Reply> {
        let sh = shared.clone();
        let caller = self.caller.clone();
        Ok(match name {
            "GET" => {
                let [k] = a else { return Err(arity(name)) };
                let req = self.get_request(key(k)?);
                one(req.key.clone(), async move {
                    match read(&sh.svc, &caller, Operation::Read, req).await {
                        Ok(Some(r)) => Reply::Bulk(r.value),
                        Ok(None) => Reply::Null,
                        Err(e) => error(e),
                    }
                })
            }
            "MGET" | "EXISTS" => {
                if a.is_empty() {
                    return Err(arity(name));
                }
                let keys = a.iter().map(key).collect::<Result<Vec<_>, _>>()?;
                let reqs: Vec<_> = keys.iter().map(|k| self.get_request(k.clone())).collect();
                let exists = name == "EXISTS";
                Step::Keys(
                    Some(keys),
                    async move {
                        let found = futures::future::join_all(
                            reqs.into_iter()
                                .map(|r| read(&sh.svc, &caller, Operation::Read, r)),
                        )
                        .await;
                        let mut out = Vec::with_capacity(found.len());
                        for f in found {
                            match f {
                                Ok(r) => out.push(r),
                                Err(e) => return error(e),
                            }
                        }
                        let total: usize = out.iter().flatten().map(|r| r.value.len()).sum();
                        if exists {
                            Reply::Int(out.iter().filter(|r| r.is_some()).count() as i64)
                        } else if total > crate::wire::RESPONSE_BYTES {
                            // As a gRPC answer is bounded: the node does not
                            // build an answer of any size for a short request.
                            Reply::err(format!(
                                "ERR MGET: the values total {total} bytes, over the answer limit of {} bytes; read fewer keys at once",
                                crate::wire::RESPONSE_BYTES
                            ))
                        } else {
                            Reply::Array(
                                out.into_iter()
                                    .map(|r| r.map(|r| Reply::Bulk(r.value)).unwrap_or(Reply::Null))
                                    .collect(),
                            )
                        }
                    }
                    .boxed(),
                )
            }
            "SET" => self.set(sh, a)?,
            "DEL" => {
                if a.is_empty() {
                    return Err(arity(name));
                }
                let keys = a.iter().map(key).collect::<Result<Vec<_>, _>>()?;
                let id = if keys.len() == 1 {
                    self.take_request_id()
                } else {
                    self.no_request_id("DEL of several keys")?;
                    String::new()
                };
                // Every key is authorized before any is deleted.
                for k in &keys {
                    sh.svc
                        .authorize(&caller, Operation::Write, Target::Key(k))
                        .map_err(error)?;
                }
                let ks = keys.clone();
                Step::Keys(
                    Some(ks),
                    async move {
                        let done = futures::future::join_all(keys.into_iter().map(|key| {
                            sh.svc.delete(
                                &caller,
                                LeaderWait::Answer,
                                pb::DeleteRequest {
                                    key,
                                    if_version: None,
                                    request_id: id.clone(),
                                },
                            )
                        }))
                        .await;
                        let mut n = 0;
                        for d in done {
                            match d {
                                Ok(_) => n += 1,
                                // Absent, or COMPLETED/EXPIRED and waiting for
                                // hand-off: not deleted, as DEL counts.
                                Err(ApiError::Rejected(
                                    Rejection::NotFound { .. } | Rejection::NotLive { .. },
                                )) => {}
                                Err(e) => return error(e),
                            }
                        }
                        Reply::Int(n)
                    }
                    .boxed(),
                )
            }
            "IF.SET" => {
                let [k, v, value] = a else {
                    return Err(arity(name));
                };
                let req = pb::UpdateRequest {
                    key: key(k)?,
                    value: value.to_vec(),
                    if_version: Some(version(v)?),
                    ttl_ms: None,
                    clear_ttl: false,
                    request_id: self.take_request_id(),
                };
                one(req.key.clone(), async move {
                    match sh.svc.update(&caller, LeaderWait::Answer, req).await {
                        Ok(m) => Reply::Int(record_of(m).version as i64),
                        Err(e) if condition_failed(&e) => Reply::Null,
                        Err(e) => error(e),
                    }
                })
            }
            "IF.DEL" => {
                let [k, v] = a else { return Err(arity(name)) };
                let req = pb::DeleteRequest {
                    key: key(k)?,
                    if_version: Some(version(v)?),
                    request_id: self.take_request_id(),
                };
                one(req.key.clone(), async move {
                    match sh.svc.delete(&caller, LeaderWait::Answer, req).await {
                        Ok(_) => Reply::Int(1),
                        Err(e) if condition_failed(&e) => Reply::Int(0),
                        Err(e) => error(e),
                    }
                })
            }
            "COMPLETE" => {
                let (k, value) = match a {
                    [k] => (k, None),
                    [k, v] => (k, Some(v.to_vec())),
                    _ => return Err(arity(name)),
                };
                let req = pb::CompleteRequest {
                    key: key(k)?,
                    value,
                    if_version: None,
                    request_id: self.take_request_id(),
                };
                one(req.key.clone(), async move {
                    match sh.svc.complete(&caller, LeaderWait::Answer, req).await {
                        Ok(m) => Reply::Int(record_of(m).version as i64),
                        Err(ApiError::Rejected(Rejection::NotFound { .. })) => Reply::Null,
                        Err(e) => error(e),
                    }
                })
            }
            "RECORD" => {
                let [k] = a else { return Err(arity(name)) };
                let req = self.get_request(key(k)?);
                one(req.key.clone(), async move {
                    match sh.svc.get(&caller, LeaderWait::Answer, None, req).await {
                        Ok(r) => record_reply(r.record.unwrap_or_default()),
                        Err(ApiError::Rejected(Rejection::NotFound { .. })) => Reply::Null,
                        Err(e) => error(e),
                    }
                })
            }
            "TTL" | "PTTL" => {
                let [k] = a else { return Err(arity(name)) };
                let req = self.get_request(key(k)?);
                let millis = name == "PTTL";
                one(req.key.clone(), async move {
                    let now = sh.svc.node().stamp();
                    match read(&sh.svc, &caller, Operation::Read, req).await {
                        Ok(None) => Reply::Int(-2),
                        Ok(Some(r)) => match r.expires_at_ms {
                            None => Reply::Int(-1),
                            Some(at) => {
                                let left = at.saturating_sub(now);
                                // Redis rounds to the nearest second.
                                Reply::Int(if millis { left } else { (left + 500) / 1000 } as i64)
                            }
                        },
                        Err(e) => error(e),
                    }
                })
            }
            "EXPIRE" | "PEXPIRE" | "PERSIST" => {
                let (k, ttl) = match (name, a) {
                    ("PERSIST", [k]) => (k, None),
                    ("EXPIRE" | "PEXPIRE", [k, t]) => {
                        let t = number(t).ok_or_else(|| {
                            Reply::err("ERR value is not an integer or out of range")
                        })?;
                        let ms = if name == "EXPIRE" {
                            t.saturating_mul(1000)
                        } else {
                            t
                        };
                        (k, Some(ms))
                    }
                    _ => return Err(arity(name)),
                };
                self.no_request_id(name)?;
                let k = key(k)?;
                let linear = self.get_request(k.clone());
                // A read-then-write: it runs alone (`conn.rs`).
                Step::Keys(
                    None,
                    async move { change_ttl(&sh.svc, &caller, linear, ttl).await }.boxed(),
                )
            }
            "SCAN" => self.scan(sh, a)?,
            _ => {
                return Err(Reply::err(format!(
                    "ERR unknown command '{}', with args beginning with: {}",
                    String::from_utf8_lossy(name.as_bytes()),
                    a.iter()
                        .take(3)
                        .map(|x| format!("'{}' ", String::from_utf8_lossy(x)))
                        .collect::<String>()
                )))
            }
        })
    }

    /// `SET key value [NX|XX] [EX s|PX ms|KEEPTTL] [GET]`.
    fn set(&mut self, sh: Arc<Shared>, a: &[Bytes]) -> Result<Step, Reply> {
        let o = SetOptions::parse(a)?;
        let caller = self.caller.clone();
        let linear = self.get_request(o.key.clone());
        match o.mode {
            SetMode::Upsert => self.no_request_id("SET without NX or XX")?,
            _ if o.get => self.no_request_id("SET ... GET")?,
            _ => {}
        }
        let id = self.take_request_id();
        // A read-then-write runs alone (`conn.rs`); an insert or an update
        // is one write and joins the others.
        let alone = o.mode == SetMode::Upsert || o.get;
        let keys = (!alone).then(|| vec![o.key.clone()]);
        Ok(Step::Keys(
            keys,
            async move {
                match set(&sh.svc, &caller, linear, o, id).await {
                    Ok(r) => r,
                    Err(e) => error(e),
                }
            }
            .boxed(),
        ))
    }

    /// `SCAN cursor [MATCH prefix*] [COUNT n]`.
    fn scan(&mut self, sh: Arc<Shared>, a: &[Bytes]) -> Result<Step, Reply> {
        let [cursor, rest @ ..] = a else {
            return Err(arity("SCAN"));
        };
        let cursor = number(cursor)
            .filter(|c| *c >= 0)
            .ok_or_else(|| Reply::err("ERR invalid cursor"))? as u64;
        let mut prefix = String::new();
        let mut count = 10u32;
        let mut rest = rest;
        while let [opt, value, tail @ ..] = rest {
            match opt.to_ascii_uppercase().as_slice() {
                b"MATCH" => prefix = prefix_of(value)?,
                b"COUNT" => {
                    count = number(value)
                        .filter(|c| *c >= 1)
                        .and_then(|c| u32::try_from(c).ok())
                        .ok_or_else(|| Reply::err("ERR value is not an integer or out of range"))?
                        .min(crate::api::MAX_SCAN_LIMIT)
                }
                b"TYPE" => {
                    return Err(Reply::err(
                        "ERR SCAN TYPE: every key holds a record; leave TYPE out",
                    ))
                }
                _ => return Err(Reply::err("ERR syntax error")),
            }
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(Reply::err("ERR syntax error"));
        }
        let after_key = match cursor {
            0 => String::new(),
            c => match sh.cursors.resume(c, &prefix) {
                Some(after) => after,
                None => {
                    return Err(Reply::err(
                        "ERR invalid cursor: unknown, expired, or given with another MATCH; start again from 0",
                    ))
                }
            },
        };
        let req = pb::ScanRequest {
            prefix: prefix.clone(),
            after_key,
            limit: count,
            consistency: self.consistency as i32,
            max_staleness_ms: self.max_staleness_ms,
        };
        let caller = self.caller.clone();
        Ok(Step::Keys(
            None,
            async move {
                match sh.svc.scan(&caller, None, req).await {
                    Ok(page) => {
                        let next = match (page.more, page.records.last()) {
                            (true, Some(last)) => sh.cursors.put(&prefix, last.key.clone()),
                            _ => 0,
                        };
                        Reply::Array(vec![
                            Reply::text(next.to_string()),
                            Reply::Array(
                                page.records
                                    .into_iter()
                                    // As GET reads them: EXPIRED is gone.
                                    .filter(|r| r.state != pb::RecordState::Expired as i32)
                                    .map(|r| Reply::text(r.key))
                                    .collect(),
                            ),
                        ])
                    }
                    Err(e) => error(e),
                }
            }
            .boxed(),
        ))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SetMode {
    Insert,
    Update,
    Upsert,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ttl {
    /// No EX/PX/KEEPTTL: the record ends up without a TTL.
    Clear,
    Set(u64),
    Keep,
}

impl Ttl {
    pub(super) fn ms(self) -> Option<u64> {
        match self {
            Ttl::Set(ms) => Some(ms),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(super) struct SetOptions {
    pub(super) key: String,
    pub(super) value: Bytes,
    pub(super) mode: SetMode,
    pub(super) ttl: Ttl,
    pub(super) get: bool,
}

impl SetOptions {
    pub(super) fn parse(a: &[Bytes]) -> Result<SetOptions, Reply> {
        let [k, value, opts @ ..] = a else {
            return Err(arity("SET"));
        };
        let mut o = SetOptions {
            key: key(k)?,
            value: value.clone(),
            mode: SetMode::Upsert,
            ttl: Ttl::Clear,
            get: false,
        };
        let syntax = || Reply::err("ERR syntax error");
        let mut i = 0;
        while i < opts.len() {
            let opt = opts[i].to_ascii_uppercase();
            match opt.as_slice() {
                b"NX" | b"XX" if o.mode != SetMode::Upsert => return Err(syntax()),
                b"NX" => o.mode = SetMode::Insert,
                b"XX" => o.mode = SetMode::Update,
                b"GET" => o.get = true,
                b"KEEPTTL" if o.ttl != Ttl::Clear => return Err(syntax()),
                b"KEEPTTL" => o.ttl = Ttl::Keep,
                b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                    if o.ttl != Ttl::Clear {
                        return Err(syntax());
                    }
                    if matches!(opt.as_slice(), b"EXAT" | b"PXAT") {
                        return Err(Reply::err(
                            "ERR SET EXAT/PXAT: give the TTL relative (EX or PX); expiry follows the leader's clock",
                        ));
                    }
                    i += 1;
                    let n = opts.get(i).and_then(number).ok_or_else(syntax)?;
                    if n <= 0 {
                        return Err(Reply::err("ERR invalid expire time in 'set' command"));
                    }
                    let ms = if opt.as_slice() == b"EX" {
                        n.saturating_mul(1000)
                    } else {
                        n
                    };
                    o.ttl = Ttl::Set(ms as u64);
                }
                _ => return Err(syntax()),
            }
            i += 1;
        }
        if o.mode == SetMode::Insert && o.ttl == Ttl::Keep {
            return Err(syntax());
        }
        Ok(o)
    }

    pub(super) fn update(&self, if_version: Option<u64>, request_id: String) -> pb::UpdateRequest {
        pb::UpdateRequest {
            key: self.key.clone(),
            value: self.value.to_vec(),
            if_version,
            ttl_ms: self.ttl.ms(),
            clear_ttl: self.ttl == Ttl::Clear,
            request_id,
        }
    }
}

/// A SET: an insert (NX), an update (XX), or an upsert: a linearizable read,
/// then an insert if the key is absent or an update at the version read,
/// again from the read if another write came between.
async fn set(
    svc: &InFlightService,
    caller: &Caller,
    linear: pb::GetRequest,
    o: SetOptions,
    id: String,
) -> Result<Reply, ApiError> {
    let ok = |old: Option<pb::Record>| match (o.get, old) {
        (true, Some(r)) => Reply::Bulk(r.value),
        (true, None) => Reply::Null,
        (false, _) => Reply::OK,
    };
    let failed = |old: Option<pb::Record>| match (o.get, old) {
        (true, Some(r)) => Reply::Bulk(r.value),
        _ => Reply::Null,
    };
    let insert = |request_id: String| pb::InsertRequest {
        key: o.key.clone(),
        value: o.value.to_vec(),
        ttl_ms: o.ttl.ms(),
        request_id,
    };
    if o.mode == SetMode::Insert && !o.get {
        return match svc.insert(caller, LeaderWait::Answer, insert(id)).await {
            Ok(_) => Ok(Reply::OK),
            Err(ApiError::Rejected(Rejection::AlreadyExists { .. })) => Ok(Reply::Null),
            Err(e) => Err(e),
        };
    }
    if o.mode == SetMode::Update && !o.get {
        return match svc
            .update(caller, LeaderWait::Answer, o.update(None, id))
            .await
        {
            Ok(_) => Ok(Reply::OK),
            Err(ApiError::Rejected(Rejection::NotFound { .. })) => Ok(Reply::Null),
            Err(e) => Err(e),
        };
    }
    let consistent = linearizable(linear);
    for _ in 0..CAS_ATTEMPTS {
        // SET ... GET shows the old value, so it needs the grant to read.
        let as_op = if o.get {
            Operation::Read
        } else {
            Operation::Write
        };
        let old = fetch(svc, caller, as_op, consistent.clone()).await?;
        // A COMPLETED or EXPIRED record takes no write until it is handed
        // off and gone: no attempt can succeed, so none is made.
        if let Some(state) = old.as_ref().and_then(immutable_state) {
            return Err(ApiError::Rejected(Rejection::NotLive {
                key: o.key.clone(),
                state,
            }));
        }
        let written = match (&old, o.mode) {
            (None, SetMode::Update) | (Some(_), SetMode::Insert) => return Ok(failed(old)),
            (None, _) => {
                svc.insert(caller, LeaderWait::Answer, insert(String::new()))
                    .await
            }
            (Some(r), _) => {
                svc.update(
                    caller,
                    LeaderWait::Answer,
                    o.update(Some(r.version), String::new()),
                )
                .await
            }
        };
        match written {
            Ok(_) => return Ok(ok(old)),
            Err(e) if condition_failed(&e) || already_exists(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(contended(&o.key))
}

/// EXPIRE, PEXPIRE (`ttl` Some) and PERSIST (None): a read, then an update
/// of the same value at the version read. A TTL of zero or less deletes
/// the record, as in Redis.
async fn change_ttl(
    svc: &InFlightService,
    caller: &Caller,
    linear: pb::GetRequest,
    ttl: Option<i64>,
) -> Reply {
    let linear = linearizable(linear);
    for _ in 0..CAS_ATTEMPTS {
        let r = match read(svc, caller, Operation::Write, linear.clone()).await {
            Ok(Some(r)) => r,
            Ok(None) => return Reply::Int(0),
            Err(e) => return error(e),
        };
        let written = match ttl {
            Some(ms) if ms <= 0 => {
                svc.delete(
                    caller,
                    LeaderWait::Answer,
                    pb::DeleteRequest {
                        key: r.key.clone(),
                        if_version: Some(r.version),
                        request_id: String::new(),
                    },
                )
                .await
            }
            None if r.expires_at_ms.is_none() => return Reply::Int(0),
            _ => {
                svc.update(
                    caller,
                    LeaderWait::Answer,
                    pb::UpdateRequest {
                        key: r.key.clone(),
                        value: r.value.to_vec(),
                        if_version: Some(r.version),
                        ttl_ms: ttl.map(|ms| ms as u64),
                        clear_ttl: ttl.is_none(),
                        request_id: String::new(),
                    },
                )
                .await
            }
        };
        match written {
            Ok(_) => return Reply::Int(1),
            Err(e) if condition_failed(&e) => continue,
            Err(e) => return error(e),
        }
    }
    error(contended(&linear.key))
}

/// The conditional write of a read-then-write must follow a LINEARIZABLE
/// read: with an older read, the version it is conditional on may be stale
/// and every attempt would fail.
fn linearizable(mut r: pb::GetRequest) -> pb::GetRequest {
    r.consistency = pb::Consistency::Linearizable as i32;
    r.max_staleness_ms = None;
    r
}

fn contended(key: &str) -> ApiError {
    ApiError::Unavailable(format!(
        "key {key:?} changed under each of {CAS_ATTEMPTS} read-then-write attempts; retry, or use IF.SET"
    ))
}

/// A record as GET sees it: a missing record and an EXPIRED one read as
/// nothing; a COMPLETED one keeps its value until it is handed off. `as_op`
/// is the grant it needs: `Read`, or `Write` for the read a write makes on
/// its own behalf (an upsert's, EXPIRE's), whose value the caller never
/// sees.
async fn read(
    svc: &InFlightService,
    caller: &Caller,
    as_op: Operation,
    req: pb::GetRequest,
) -> Result<Option<pb::Record>, ApiError> {
    Ok(fetch(svc, caller, as_op, req)
        .await?
        .filter(|r| r.state != pb::RecordState::Expired as i32))
}

/// The record in any state, or `None` if there is none.
async fn fetch(
    svc: &InFlightService,
    caller: &Caller,
    as_op: Operation,
    req: pb::GetRequest,
) -> Result<Option<pb::Record>, ApiError> {
    match svc
        .get_as(caller, as_op, LeaderWait::Answer, None, req)
        .await
    {
        Ok(r) => Ok(r.record),
        Err(ApiError::Rejected(Rejection::NotFound { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The state of a record that takes no more writes, if it is one.
fn immutable_state(r: &pb::Record) -> Option<crate::state::RecordState> {
    match pb::RecordState::try_from(r.state) {
        Ok(pb::RecordState::Completed) => Some(crate::state::RecordState::Completed),
        Ok(pb::RecordState::Expired) => Some(crate::state::RecordState::Expired),
        _ => None,
    }
}

pub(super) fn record_of(m: pb::MutationResponse) -> pb::Record {
    m.record.unwrap_or_default()
}

fn condition_failed(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Rejected(Rejection::VersionMismatch { .. } | Rejection::NotFound { .. })
    )
}

fn already_exists(e: &ApiError) -> bool {
    matches!(e, ApiError::Rejected(Rejection::AlreadyExists { .. }))
}

fn record_reply(r: pb::Record) -> Reply {
    let state = match pb::RecordState::try_from(r.state) {
        Ok(pb::RecordState::Live) => "live",
        Ok(pb::RecordState::Completed) => "completed",
        Ok(pb::RecordState::Expired) => "expired",
        _ => "unknown",
    };
    let opt = |v: Option<u64>| v.map(|v| Reply::Int(v as i64)).unwrap_or(Reply::Null);
    Reply::Map(vec![
        (Reply::text("key"), Reply::text(r.key)),
        (Reply::text("value"), Reply::Bulk(r.value)),
        (Reply::text("version"), Reply::Int(r.version as i64)),
        (Reply::text("state"), Reply::text(state)),
        (
            Reply::text("create_revision"),
            Reply::Int(r.create_revision as i64),
        ),
        (
            Reply::text("mod_revision"),
            Reply::Int(r.mod_revision as i64),
        ),
        (
            Reply::text("created_at_ms"),
            Reply::Int(r.created_at_ms as i64),
        ),
        (
            Reply::text("updated_at_ms"),
            Reply::Int(r.updated_at_ms as i64),
        ),
        (Reply::text("expires_at_ms"), opt(r.expires_at_ms)),
    ])
}

/// A record command's error, with the prefix a Redis client knows it by.
pub(super) fn error(e: ApiError) -> Reply {
    let prefix = match &e {
        ApiError::NotLeader { .. } => "READONLY",
        ApiError::Unavailable(_) => "TRYAGAIN",
        ApiError::OutcomeUnknown(_) => "UNKNOWN",
        ApiError::ResourceExhausted(_) => "OOM",
        ApiError::PermissionDenied { .. } => "NOPERM",
        ApiError::Rejected(Rejection::NotLive { .. }) => "IMMUTABLE",
        ApiError::BatchRejected { .. } => "EXECFAILED",
        _ => "ERR",
    };
    let text = match &e {
        ApiError::NotLeader { .. } => format!(
            "{e}; this node passes writes on to the leader it knows and serves reads at every level \
             but LEASE, so send this to the leader"
        ),
        ApiError::OutcomeUnknown(_) => {
            format!("{e}; the write may have applied: retry with the same REQID to find out")
        }
        ApiError::BatchRejected { .. } => format!("{e}; nothing of the MULTI block was applied"),
        _ => e.to_string(),
    };
    Reply::err(format!("{prefix} {text}"))
}

pub(super) fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

pub(super) fn one(
    key: String,
    f: impl std::future::Future<Output = Reply> + Send + 'static,
) -> Step {
    Step::Keys(Some(vec![key]), f.boxed())
}

pub(super) fn key(k: &Bytes) -> Result<String, Reply> {
    String::from_utf8(k.to_vec())
        .map_err(|_| Reply::err("ERR keys must be UTF-8 text (inflight keys are strings)"))
}

pub(super) fn number(b: &Bytes) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

pub(super) fn version(b: &Bytes) -> Result<u64, Reply> {
    number(b)
        .filter(|v| *v >= 1)
        .map(|v| v as u64)
        .ok_or_else(|| Reply::err("ERR version must be a positive integer"))
}

/// The prefix of a `MATCH` pattern: `prefix*`, or `*` for every key.
fn prefix_of(pattern: &Bytes) -> Result<String, Reply> {
    let refuse = || {
        Reply::err(
            "ERR MATCH: only prefix patterns are supported (text then one trailing *, without ?, [ or \\)",
        )
    };
    let p = std::str::from_utf8(pattern).map_err(|_| refuse())?;
    let prefix = p.strip_suffix('*').ok_or_else(refuse)?;
    if prefix.contains(['*', '?', '[', ']', '\\']) {
        return Err(refuse());
    }
    Ok(prefix.to_string())
}
