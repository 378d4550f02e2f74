//! The Rust client library.
//!
//! A `Client` holds a list of endpoints and remembers which one is the leader.
//! Mutations and LEASE reads go to the leader if one is known, else to the
//! next endpoint in turn. LINEARIZABLE reads go where
//! `ClientOptions::linearizable_reads` says: the leader (default), any
//! member, or the home member (every member serves them, see
//! `raft::follower_read`). STALE reads and watches go to the
//! client's current endpoint (its first, until that one fails), so that they
//! share frames; give the `Client`s of different processes their endpoints
//! in different orders to spread STALE reads over the followers (with
//! `frames: false` they rotate over the endpoints call by call). When a node
//! answers `UNAVAILABLE` with the leader's address in `x-inflight-leader`,
//! the client follows it at once; when a node is down, drops the connection
//! mid-call, times out or knows no leader, the client tries the next endpoint
//! after an exponential backoff with jitter, until `ClientOptions::retry_for`
//! has passed. Other errors return at once.
//!
//! Every mutation carries a request id: the caller's, or a time-ordered
//! UUIDv7 made at the first attempt. Retries (after a timeout, a leader
//! change, or an `UNKNOWN` outcome) reuse it, so the cluster applies the
//! mutation at most once and answers a retry with the first attempt's result.
//!
//! Records come back as `pb::Record`. An answer carrying many records stays
//! within what a default gRPC client accepts by leaving values out, flagged
//! `value_omitted` (an omitted value is empty, with the flag set; an empty
//! value has the flag unset): `batch` results, mutations that shared a frame
//! with others, and watch events too large for one message. Every other
//! field of such a record is exact; `get` the key for its value. `get`
//! itself always returns the value: when its frame had no room for it, the
//! client reads the key again, alone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use tonic::transport::Channel;
use tonic::{Code, Response, Status, Streaming};

use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::in_flight_client::InFlightClient;
pub use crate::pb::Consistency;
use crate::wire::{self, MemberAddr, LEADER_ADDR_KEY};
pub use report::{dead_letter_json, handoff_json, status_json, ClusterReport, MemberReport};
use session::Session;

mod report;
mod session;
pub use crate::wire::ClientTls;

pub type Result<T> = std::result::Result<T, Status>;

/// Largest response the client accepts. Every answer of the record API
/// stays within `wire::RESPONSE_BYTES` (4 MiB - 64 KiB) by leaving values
/// out (`Record::value_omitted`); only a watch asking for larger messages
/// (`WatchRequest::max_message_bytes`) gets more, up to this.
const MAX_RESPONSE_BYTES: usize = wire::MAX_WATCH_MESSAGE_BYTES;
/// Largest request the client sends: a batch carries up to 4 × 1.75 MiB of
/// values and 1,000 keys, far below this; the node accepts at least 16 MiB.
const MAX_REQUEST_BYTES: usize = 64 << 20;

fn records(ch: Channel) -> InFlightClient<Channel> {
    InFlightClient::new(ch)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES)
}

/// How one attempt of an op travels.
enum Via {
    /// In the node's session, with the ops of other callers.
    Frame(Arc<Session>),
    /// As a unary call of its own; `true`: asking a follower that has lost
    /// the leader to wait for the next one.
    Unary(Channel, bool),
}

/// `op` as the unary call it stands for, its answer as a frame would give it.
async fn unary_op(
    ch: Channel,
    op: pb::frame_op::Op,
    wait_leader: bool,
) -> Result<pb::op_result::Result> {
    use pb::frame_op::Op;
    use pb::op_result::Result as R;
    fn request<M>(message: M, wait_leader: bool) -> tonic::Request<M> {
        let mut r = tonic::Request::new(message);
        if wait_leader {
            r.metadata_mut().insert(
                wire::WAIT_LEADER_KEY,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        r
    }
    let mut c = records(ch);
    Ok(match op {
        Op::Insert(r) => R::Mutation(c.insert(request(r, wait_leader)).await?.into_inner()),
        Op::Update(r) => R::Mutation(c.update(request(r, wait_leader)).await?.into_inner()),
        Op::Delete(r) => R::Mutation(c.delete(request(r, wait_leader)).await?.into_inner()),
        Op::Complete(r) => R::Mutation(c.complete(request(r, wait_leader)).await?.into_inner()),
        Op::Get(r) => R::Get(c.get(request(r, wait_leader)).await?.into_inner()),
    })
}

/// An open watch stream (`Client::watch`). Messages come as the node sent
/// them: events in revision order, whole revisions per message except that a
/// revision larger than the watcher's `max_message_bytes` is split over
/// several messages, each but its last flagged `more_in_revision`. Events
/// are passed on as they arrive; the resume point moves only at revision
/// ends, so a stream cut off inside a split revision resumes at that
/// revision's first event (those of its events already received come again).
#[derive(Debug)]
pub struct Watch {
    stream: Streaming<pb::WatchResponse>,
    resume_from: u64,
}

impl Watch {
    /// The next message; `None` when the node ended the stream cleanly (it
    /// is stopping), an error status when it cancelled the stream.
    pub async fn message(&mut self) -> Result<Option<pb::WatchResponse>> {
        let msg = self.stream.message().await?;
        if let Some(m) = &msg {
            // Every event up to `m.revision` has been delivered, including on
            // a fragment, whose `revision` is the one before the split one.
            if m.revision > 0 {
                self.resume_from = self.resume_from.max(m.revision + 1);
            }
        }
        Ok(msg)
    }

    /// The `from_revision` to watch again from after this stream ends: one
    /// past the last revision delivered whole (the request's own
    /// `from_revision` until a message arrived).
    pub fn resume_from(&self) -> u64 {
        self.resume_from
    }
}

/// The first pause before a retry; each retry doubles it, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest pause between two attempts of one call: short enough that a
/// client finds a new leader within a fraction of an election, long enough
/// that a cluster without one is not flooded.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Attempts of one call in flight at once: the first, and one hedge.
const MAX_ATTEMPTS: usize = 2;

/// Sleeps until `at`, or forever when there is nothing to wake for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A new request id: UUIDv7, so ids sort by creation time.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn ensure_id(id: &mut String) {
    if id.is_empty() {
        *id = new_request_id();
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of one attempt.
    pub request_timeout: Duration,
    /// When an attempt has not answered within this, send the same call
    /// (same request id) to another node as well, and take the first answer
    /// (`None`: one attempt at a time). Set it to a few times the usual
    /// latency: well above it, it only costs time in a failover; near it,
    /// calls that are merely slow are sent twice.
    pub hedge_after: Option<Duration>,
    /// Every this often, learn the members' client addresses from the
    /// cluster and use them as endpoints beside the ones given (`None`:
    /// only the given endpoints), so that a client outlives the replacement
    /// of the nodes it was started with. Only with `follow_leader`.
    pub sync_endpoints: Option<Duration>,
    /// How long to keep retrying retryable failures before giving up.
    pub retry_for: Duration,
    /// Source address of the client's connections (default: chosen by the
    /// OS), so that firewalls see the client as a host of its own.
    pub local_address: Option<std::net::IpAddr>,
    /// Follow `x-inflight-leader` redirects (default). When false, the
    /// client only ever talks to its own endpoints, and a node that is not
    /// the leader answers for itself (UNAVAILABLE for what needs the leader).
    pub follow_leader: bool,
    /// Send inserts, updates, deletes, completes and gets in frames on one
    /// session stream per node (default), so that the calls of many callers
    /// sharing this client travel together. When false, each call is a unary
    /// RPC of its own.
    pub frames: bool,
    /// Connect over TLS, trusting this CA and presenting this identity
    /// (default: plaintext).
    pub tls: Option<ClientTls>,
    /// Where LINEARIZABLE reads go (default: the leader). Every member
    /// serves them: a follower asks the leader for its read index, so a read
    /// there costs one more hop but takes the read off the leader's CPU.
    pub linearizable_reads: ReadFrom,
}

/// Where a client sends its LINEARIZABLE reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// The leader, as far as known: the lowest latency, all reads on one node.
    #[default]
    Leader,
    /// Any member, as STALE reads: the client's current endpoint with
    /// frames, each endpoint in turn without. Give the clients of different
    /// processes their endpoints in different orders to spread the reads.
    Any,
    /// The first endpoint given (the nearest member, say one in the same
    /// zone, or a learner placed there as a read replica); the others only
    /// when a read there fails.
    Home,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            hedge_after: Some(Duration::from_millis(250)),
            sync_endpoints: Some(Duration::from_secs(10)),
            retry_for: Duration::from_secs(20),
            local_address: None,
            follow_leader: true,
            frames: true,
            tls: None,
            linearizable_reads: ReadFrom::Leader,
        }
    }
}

/// The status's message and, for a failure of the connection, its causes:
/// "transport error" alone does not say that the connection was refused or
/// that a certificate was not accepted.
fn described(s: &Status) -> String {
    let mut msg = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

/// A TLS failure that trying again cannot fix: the node's certificate is not
/// trusted (or does not name the address dialed), or the node refused ours.
fn tls_refusal(s: &Status) -> bool {
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        let text = c.to_string();
        if text.contains("invalid peer certificate") || text.contains("received fatal alert") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Where a call should go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The leader, as far as known.
    Leader,
    /// Any node (STALE reads, watches).
    Any,
    /// The first given endpoint for a call's first attempt, then as `Any`.
    Home,
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// The given endpoints, then those learned from the membership
    /// (`ClientOptions::sync_endpoints`).
    endpoints: RwLock<Arc<Vec<String>>>,
    given: Vec<String>,
    /// When the endpoints were last learned, and whether a sync is under way.
    synced: Mutex<(Instant, bool)>,
    channels: Mutex<HashMap<String, Channel>>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    leader: Mutex<Option<String>>,
    next: AtomicUsize,
    opts: ClientOptions,
}

impl Client {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Client> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        opts: ClientOptions,
    ) -> Result<Client> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(Into::into)
            .map(|e: String| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Status::invalid_argument(
                "endpoints: at least one HOST:PORT is needed",
            ));
        }
        for e in &endpoints {
            wire::secure_endpoint(e, opts.tls.as_ref().map(ClientTls::config)).map_err(|err| {
                Status::invalid_argument(format!("endpoints: {e:?} is not HOST:PORT: {err}"))
            })?;
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: RwLock::new(Arc::new(endpoints.clone())),
                given: endpoints,
                synced: Mutex::new((Instant::now(), false)),
                channels: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                next: AtomicUsize::new(0),
                opts,
            }),
        })
    }

    /// The endpoints the client uses now: the given ones, then the members
    /// learned since (`ClientOptions::sync_endpoints`).
    pub fn endpoints(&self) -> Arc<Vec<String>> {
        self.inner.endpoints.read().clone()
    }

    /// Starts learning the members' addresses in the background when the
    /// last sync is older than `ClientOptions::sync_endpoints`.
    fn maybe_sync_endpoints(&self) {
        let Some(every) = self.inner.opts.sync_endpoints else {
            return;
        };
        if !self.inner.opts.follow_leader {
            return;
        }
        {
            let mut synced = self.inner.synced.lock();
            if synced.1 || synced.0.elapsed() < every {
                return;
            }
            synced.1 = true;
        }
        /// Marks the sync done however its task ends (also if it is
        /// dropped with its runtime), so that the next one can start.
        struct Done(Client);
        impl Drop for Done {
            fn drop(&mut self) {
                *self.0.inner.synced.lock() = (Instant::now(), false);
            }
        }
        let done = Done(self.clone());
        tokio::spawn(async move {
            if let Some(members) = done.0.members_once().await {
                done.0.adopt_members(&members);
            }
        });
    }

    /// The member list, asked once of the leader (or the current endpoint),
    /// with one request timeout: a sync must not hold up anything.
    async fn members_once(&self) -> Option<Vec<pb::Member>> {
        let target = self.target(Route::Leader);
        let channel = self.channel(&target).ok()?;
        let mut cluster = ClusterClient::new(channel);
        let ask = cluster.member_list(pb::MemberListRequest {});
        match tokio::time::timeout(self.inner.opts.request_timeout, ask).await {
            Ok(Ok(r)) => Some(r.into_inner().members),
            _ => None,
        }
    }

    /// Adds the members' client addresses to the endpoints: the given
    /// endpoints stay first and always (they may name the cluster in a way
    /// the membership does not, e.g. a DNS name), then the members not among
    /// them; a learned address that left the membership is dropped. An empty
    /// list changes nothing.
    fn adopt_members(&self, members: &[pb::Member]) {
        if members.is_empty() {
            return;
        }
        let tls = self.inner.opts.tls.as_ref().map(ClientTls::config);
        let mut next = self.inner.given.clone();
        for m in members {
            let a = &m.address;
            if !a.is_empty() && !next.contains(a) && wire::secure_endpoint(a, tls).is_ok() {
                next.push(a.clone());
            }
        }
        let mut endpoints = self.inner.endpoints.write();
        if next != **endpoints {
            *endpoints = Arc::new(next);
        }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self.inner.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = wire::secure_endpoint(addr, self.inner.opts.tls.as_ref().map(ClientTls::config))
            .map_err(|e| Status::invalid_argument(format!("bad address {addr:?}: {e}")))?
            .local_address(self.inner.opts.local_address)
            .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// The session to `addr`, opened on first use.
    fn session(&self, addr: &str) -> Result<Arc<Session>> {
        if let Some(s) = self.inner.sessions.lock().get(addr) {
            return Ok(s.clone());
        }
        let channel = self.channel(addr)?;
        let mut sessions = self.inner.sessions.lock();
        let s = sessions
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Session::open(channel, self.inner.opts.request_timeout)));
        Ok(s.clone())
    }

    /// One mutation, in a frame or as a unary call (`ClientOptions::frames`).
    async fn mutate(&self, op: pb::frame_op::Op) -> Result<pb::MutationResponse> {
        self.framed(Route::Leader, op, |r| match r {
            pb::op_result::Result::Mutation(m) => Some(m),
            _ => None,
        })
        .await
    }

    /// One op, retried and hedged (see `retrying_at`); `answer` picks the
    /// expected kind of result out of the op's outcome. The first attempt
    /// goes in its target's next frame (`ClientOptions::frames`); every
    /// later one (a hedge, a retry, a redirect) is a unary call asking a
    /// follower that has lost the leader to wait for the next one
    /// (`wire::WAIT_LEADER_KEY`): a frame is answered only when all its ops
    /// are, so a held op must not ride in one.
    async fn framed<T>(
        &self,
        route: Route,
        op: pb::frame_op::Op,
        answer: fn(pb::op_result::Result) -> Option<T>,
    ) -> Result<T> {
        self.retrying_at(route, true, |target, later| {
            let op = op.clone();
            let via = if later || !self.inner.opts.frames {
                self.channel(target).map(|ch| Via::Unary(ch, later))
            } else {
                self.session(target).map(Via::Frame)
            };
            async move {
                let outcome = match via? {
                    Via::Frame(session) => session.call(pb::FrameOp { op: Some(op) }).await?,
                    Via::Unary(ch, wait) => unary_op(ch, op, wait).await?,
                };
                answer(outcome).ok_or_else(|| {
                    Status::internal("an op was answered with another kind of result")
                })
            }
        })
        .await
    }

    fn target(&self, route: Route) -> String {
        match route {
            Route::Leader => {
                if let Some(l) = self.inner.leader.lock().clone() {
                    return l;
                }
            }
            Route::Home => return self.inner.given[0].clone(),
            Route::Any => {}
        }
        let endpoints = self.endpoints();
        let n = endpoints.len();
        // With frames, calls for any node stay on the current endpoint (until
        // it fails) so that they share its frames: spreading them over every
        // node would split each frame three ways. Unary calls rotate.
        let i = match route {
            Route::Any if !self.inner.opts.frames => {
                self.inner.next.fetch_add(1, Ordering::Relaxed)
            }
            _ => self.inner.next.load(Ordering::Relaxed),
        };
        endpoints[i % n].clone()
    }

    /// `target(route)`, or, when an attempt is already waiting there, the
    /// next endpoint without one (for a hedge); `None` if every one has.
    fn target_avoiding(&self, route: Route, busy: &[String]) -> Option<String> {
        let first = self.target(route);
        if !busy.contains(&first) {
            return Some(first);
        }
        let endpoints = self.endpoints();
        let start = self.inner.next.load(Ordering::Relaxed);
        (0..endpoints.len())
            .map(|i| &endpoints[(start + i) % endpoints.len()])
            .find(|e| !busy.contains(e))
            .cloned()
    }

    fn rotate(&self, failed: &str) {
        let mut leader = self.inner.leader.lock();
        if leader.as_deref() == Some(failed) {
            *leader = None;
        }
        self.inner.next.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `call` against the leader (or another endpoint), following
    /// redirects and retrying retryable failures until `retry_for` passes.
    async fn retrying<T, F, Fut>(&self, route: Route, mut call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>>>,
    {
        self.retrying_at(route, false, |target, _| {
            let channel = self.channel(target);
            let attempt = channel.map(&mut call);
            async move { attempt?.await.map(Response::into_inner) }
        })
        .await
    }

    /// Like `retrying`, for calls that pick their own way to `target` (a
    /// unary RPC on its channel, or an op in its session's next frame).
    /// `call(target, later)`: `later` is false for the call's first attempt
    /// only.
    ///
    /// With `hedge`, attempts may overlap: when one has not answered within
    /// `ClientOptions::hedge_after`, a second goes to another node (the same
    /// call, so the same request id: at most one of them applies), and the
    /// first success wins; an error from one attempt waits for the other.
    /// Later attempts ask a follower that has lost the leader to hold them
    /// until an election settles (`wire::WAIT_LEADER_KEY`), so a hedge comes
    /// back with the new leader as soon as there is one, instead of the
    /// client waiting out `request_timeout` on a leader that will never
    /// answer. Only calls that are safe to send twice at once and cheap to
    /// send are hedged: single ops, not batches, scans or admin calls.
    async fn retrying_at<T, F, Fut>(&self, route: Route, hedge: bool, mut call: F) -> Result<T>
    where
        F: FnMut(&str, bool) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let opts = &self.inner.opts;
        self.maybe_sync_endpoints();
        let started = Instant::now();
        let deadline = started + opts.retry_for;
        let hedge_after = opts.hedge_after.filter(|_| hedge);
        // When to hedge an attempt that has not answered: `None` for never.
        let hedge_at = |from: Instant, wait: Duration| -> Option<Instant> {
            from.checked_add(wait).filter(|at| *at <= deadline)
        };
        let mut backoff = FIRST_BACKOFF;
        let mut redirects = 0;
        let mut attempts = 0;
        // What a node itself last said (e.g. "no leader is known"): more useful
        // to report on giving up than the last connection error.
        let mut from_a_node: Option<Status> = None;
        // An answer that ends the call, kept while another attempt may still succeed.
        let mut settled: Option<Status> = None;
        let mut pending = FuturesUnordered::new();
        // The nodes with an attempt in flight.
        let mut busy: Vec<String> = Vec::new();
        // When to start the next attempt, and where if a redirect said so.
        let mut next: Option<(Instant, Option<String>)> = Some((started, None));
        loop {
            if let Some((at, _)) = &next {
                if *at <= Instant::now() && busy.len() < MAX_ATTEMPTS {
                    let to = next.take().and_then(|(_, to)| to);
                    let route = match route {
                        Route::Home if attempts > 0 => Route::Any,
                        r => r,
                    };
                    // No other node to hedge to: wait for the attempt in flight.
                    let Some(target) = to.or_else(|| self.target_avoiding(route, &busy)) else {
                        continue;
                    };
                    busy.push(target.clone());
                    let attempt = call(&target, attempts > 0);
                    attempts += 1;
                    let timeout = opts.request_timeout;
                    pending.push(async move {
                        let answer = match tokio::time::timeout(timeout, attempt).await {
                            Ok(r) => r,
                            Err(_) => Err(Status::deadline_exceeded(format!(
                                "{target} did not answer within {timeout:?}"
                            ))),
                        };
                        (target, answer)
                    });
                    if busy.len() < MAX_ATTEMPTS {
                        next = hedge_after
                            .and_then(|h| hedge_at(Instant::now(), h))
                            .map(|at| (at, None));
                    }
                    continue;
                }
            }
            let wake = next
                .as_ref()
                .filter(|_| busy.len() < MAX_ATTEMPTS)
                .map(|(at, _)| *at);
            let (target, status) = tokio::select! {
                Some((target, answer)) = pending.next() => match answer {
                    Ok(resp) => return Ok(resp),
                    Err(s) => (target, s),
                },
                _ = sleep_until(wake) => continue,
            };
            busy.retain(|b| *b != target);
            if settled.is_some() {
                // The call was settled by an error; this attempt did not
                // succeed either.
                if busy.is_empty() {
                    return Err(settled.unwrap_or(status));
                }
                continue;
            }
            if std::error::Error::source(&status).is_none() {
                from_a_node = Some(status.clone());
            }
            let retry = if tls_refusal(&status) {
                settled = Some(Status::new(
                    status.code(),
                    format!("{target}: TLS refused: {}", described(&status)),
                ));
                false
            } else {
                match status.code() {
                    Code::Unavailable => {
                        let hint = status
                            .metadata()
                            .get(LEADER_ADDR_KEY)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        match hint {
                            // The node names the leader an attempt is already
                            // waiting on: nothing new. Wait for that attempt,
                            // and look elsewhere again after a while.
                            Some(leader) if opts.follow_leader && busy.contains(&leader) => {
                                let wait = hedge_after.unwrap_or(Duration::ZERO).max(backoff);
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                                if next.is_none() {
                                    next = hedge_at(Instant::now(), wait).map(|at| (at, None));
                                }
                                false
                            }
                            Some(leader)
                                if opts.follow_leader && leader != target && redirects < 3 =>
                            {
                                *self.inner.leader.lock() = Some(leader.clone());
                                redirects += 1;
                                next = Some((Instant::now(), Some(leader)));
                                continue;
                            }
                            _ => true,
                        }
                    }
                    // Safe to retry: every call made here is a read, carries a
                    // request id, is a membership change the server treats as
                    // idempotent (adding a member twice or promoting a voter is a
                    // no-op), or a hand-off retry or drop of exact handoff ids (a
                    // second apply changes nothing). `Cancelled` is what a
                    // connection cut mid-call (a node killed under us) looks
                    // like; the call may or may not have landed.
                    Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => true,
                    _ => {
                        settled = Some(status.clone());
                        false
                    }
                }
            };
            if let Some(answer) = &settled {
                if busy.is_empty() {
                    return Err(answer.clone());
                }
                next = None;
                continue;
            }
            if retry {
                self.rotate(&target);
                redirects = 0;
                let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
                let at = Instant::now() + backoff + Duration::from_millis(jitter);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if at <= deadline {
                    next = Some(match next.take() {
                        Some((sooner, to)) if sooner <= at => (sooner, to),
                        _ => (at, None),
                    });
                }
            }
            if busy.is_empty() && next.is_none() {
                let last = from_a_node.unwrap_or(status);
                return Err(Status::with_metadata(
                    last.code(),
                    format!(
                        "gave up after {:?} of retries against {}: {}",
                        opts.retry_for,
                        self.endpoints().join(","),
                        described(&last)
                    ),
                    last.metadata().clone(),
                ));
            }
        }
    }

    // ----- mutations -------------------------------------------------------

    pub async fn insert(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<pb::MutationResponse> {
        self.send_insert(pb::InsertRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
    }

    /// Insert with every option (TTL, request id). An empty request id gets a fresh one.
    pub async fn send_insert(&self, mut req: pb::InsertRequest) -> Result<pb::MutationResponse> {
        ensure_id(&mut req.request_id);
        self.mutate(pb::frame_op::Op::Insert(req)).await
    }

    pub async fn update(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        if_version: Option<u64>,
    ) -> Result<pb::MutationResponse> {
        self.send_update(pb::UpdateRequest {
            key: key.into(),
            value: value.into(),
            if_version,
            ..Default::default()
        })
        .await
    }

    pub async fn send_update(&self, mut req: pb::UpdateRequest) -> Result<pb::MutationResponse> {
        ensure_id(&mut req.request_id);
        self.mutate(pb::frame_op::Op::Update(req)).await
    }

    pub async fn delete(&self, key: &str, if_version: Option<u64>) -> Result<pb::MutationResponse> {
        self.send_delete(pb::DeleteRequest {
            key: key.into(),
            if_version,
            ..Default::default()
        })
        .await
    }

    pub async fn send_delete(&self, mut req: pb::DeleteRequest) -> Result<pb::MutationResponse> {
        ensure_id(&mut req.request_id);
        self.mutate(pb::frame_op::Op::Delete(req)).await
    }

    pub async fn complete(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        if_version: Option<u64>,
    ) -> Result<pb::MutationResponse> {
        self.send_complete(pb::CompleteRequest {
            key: key.into(),
            value,
            if_version,
            ..Default::default()
        })
        .await
    }

    pub async fn send_complete(
        &self,
        mut req: pb::CompleteRequest,
    ) -> Result<pb::MutationResponse> {
        ensure_id(&mut req.request_id);
        self.mutate(pb::frame_op::Op::Complete(req)).await
    }

    /// Several mutations applied atomically (all or none). The answer stays
    /// within 4 MiB - 64 KiB: from the first record whose value would pass
    /// that on, results come with `value_omitted` set and no value.
    pub async fn batch(&self, mut req: pb::BatchRequest) -> Result<pb::BatchResponse> {
        ensure_id(&mut req.request_id);
        self.retrying(Route::Leader, |ch| {
            let req = req.clone();
            async move { records(ch).batch(req).await }
        })
        .await
    }

    // ----- reads -----------------------------------------------------------

    fn read_route(&self, consistency: i32) -> Route {
        if consistency == Consistency::Stale as i32 {
            Route::Any
        } else if consistency == Consistency::Linearizable as i32 {
            match self.inner.opts.linearizable_reads {
                ReadFrom::Leader => Route::Leader,
                ReadFrom::Any => Route::Any,
                ReadFrom::Home => Route::Home,
            }
        } else {
            Route::Leader
        }
    }

    pub async fn get(&self, key: &str, consistency: Consistency) -> Result<pb::GetResponse> {
        self.send_get(pb::GetRequest {
            key: key.into(),
            consistency: consistency as i32,
            max_staleness_ms: None,
        })
        .await
    }

    pub async fn send_get(&self, req: pb::GetRequest) -> Result<pb::GetResponse> {
        let route = self.read_route(req.consistency);
        let got = self
            .framed(route, pb::frame_op::Op::Get(req.clone()), |r| match r {
                pb::op_result::Result::Get(g) => Some(g),
                _ => None,
            })
            .await?;
        if !got.record.as_ref().is_some_and(|r| r.value_omitted) {
            return Ok(got);
        }
        // The frame's answer had no room left for this value: read the key
        // again on its own, where one record always fits. Still a read made
        // within this call, at the requested consistency.
        self.retrying(route, |ch| {
            let req = req.clone();
            async move { records(ch).get(req).await }
        })
        .await
    }

    pub async fn scan(
        &self,
        prefix: &str,
        limit: u32,
        after_key: &str,
        consistency: Consistency,
    ) -> Result<pb::ScanResponse> {
        self.send_scan(pb::ScanRequest {
            prefix: prefix.into(),
            limit,
            after_key: after_key.into(),
            consistency: consistency as i32,
            max_staleness_ms: None,
        })
        .await
    }

    pub async fn send_scan(&self, req: pb::ScanRequest) -> Result<pb::ScanResponse> {
        self.retrying(self.read_route(req.consistency), |ch| {
            let req = req.clone();
            async move { records(ch).scan(req).await }
        })
        .await
    }

    /// Opens a watch on some node (any node serves watches from its own state).
    /// The stream ends with an error status when the server cancels it; resume
    /// with `from_revision` = [`Watch::resume_from`].
    pub async fn watch(&self, req: pb::WatchRequest) -> Result<Watch> {
        let resume_from = req.from_revision;
        let stream = self
            .retrying(Route::Any, |ch| {
                let req = req.clone();
                async move { records(ch).watch(req).await }
            })
            .await?;
        Ok(Watch {
            stream,
            resume_from,
        })
    }

    // ----- cluster ---------------------------------------------------------

    pub async fn member_list(&self) -> Result<pb::MemberListResponse> {
        self.retrying(Route::Leader, |ch| async move {
            ClusterClient::new(ch)
                .member_list(pb::MemberListRequest {})
                .await
        })
        .await
    }

    /// Adds node `id`, reached by clients and by peers at `address`.
    pub async fn add_learner(
        &self,
        id: u64,
        address: &MemberAddr,
    ) -> Result<pb::MemberListResponse> {
        let req = pb::AddLearnerRequest {
            id,
            address: address.client.clone(),
            peer_address: address.peer.clone(),
        };
        self.retrying(Route::Leader, |ch| {
            let req = req.clone();
            async move { ClusterClient::new(ch).add_learner(req).await }
        })
        .await
    }

    pub async fn promote(&self, id: u64) -> Result<pb::MemberListResponse> {
        self.retrying(Route::Leader, |ch| async move {
            ClusterClient::new(ch)
                .promote(pb::PromoteRequest { id })
                .await
        })
        .await
    }

    /// Removes a voter or learner; `force` allows leaving the remaining voters
    /// without a reachable quorum.
    pub async fn remove_member(&self, id: u64, force: bool) -> Result<pb::MemberListResponse> {
        self.retrying(Route::Leader, |ch| async move {
            ClusterClient::new(ch)
                .remove_member(pb::RemoveMemberRequest { id, force })
                .await
        })
        .await
    }

    /// Hands leadership to voter `to`; returns once it leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<pb::TransferLeaderResponse> {
        self.retrying(Route::Leader, |ch| async move {
            ClusterClient::new(ch)
                .transfer_leader(pb::TransferLeaderRequest { to })
                .await
        })
        .await
    }

    /// Records the sink refused for good, from the leader's view: a page
    /// after `after` (a handoff id, or empty for the start).
    pub async fn handoff_failed(
        &self,
        limit: u32,
        after: &str,
    ) -> Result<pb::HandoffFailedResponse> {
        self.send_handoff_failed(pb::HandoffFailedRequest {
            limit,
            after: after.into(),
            keys: Vec::new(),
        })
        .await
    }

    pub async fn send_handoff_failed(
        &self,
        req: pb::HandoffFailedRequest,
    ) -> Result<pb::HandoffFailedResponse> {
        self.retrying(Route::Leader, |ch| {
            let req = req.clone();
            async move { ClusterClient::new(ch).handoff_failed(req).await }
        })
        .await
    }

    /// The exact handoff ids of the dead letters under `keys` (NOT_FOUND
    /// naming a key that holds none). Retry and drop are then sent for
    /// those ids, so that a retried request cannot touch a record the
    /// operator never saw (a key reused and refused again in between).
    async fn dead_letter_ids(&self, keys: Vec<String>) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let found = self
            .send_handoff_failed(pb::HandoffFailedRequest {
                keys,
                ..Default::default()
            })
            .await?;
        Ok(found.records.into_iter().map(|d| d.handoff_id).collect())
    }

    /// Puts dead letters (`keys`, or every one with `all`) back in the hand-off queue.
    pub async fn handoff_retry(
        &self,
        keys: Vec<String>,
        all: bool,
    ) -> Result<pb::HandoffChangeResponse> {
        let req = if all {
            pb::HandoffRetryRequest {
                keys,
                all,
                ..Default::default()
            }
        } else {
            pb::HandoffRetryRequest {
                handoff_ids: self.dead_letter_ids(keys).await?,
                ..Default::default()
            }
        };
        self.retrying(Route::Leader, |ch| {
            let req = req.clone();
            async move { ClusterClient::new(ch).handoff_retry(req).await }
        })
        .await
    }

    /// Removes dead letters from memory without hand-off.
    pub async fn handoff_drop(&self, keys: Vec<String>) -> Result<pb::HandoffChangeResponse> {
        let req = pb::HandoffDropRequest {
            handoff_ids: self.dead_letter_ids(keys).await?,
            ..Default::default()
        };
        self.retrying(Route::Leader, |ch| {
            let req = req.clone();
            async move { ClusterClient::new(ch).handoff_drop(req).await }
        })
        .await
    }

    /// The status of one node, asked once, with `timeout`; no retries, no redirects.
    pub async fn node_status(&self, addr: &str, timeout: Duration) -> Result<pb::NodeStatus> {
        let ch = self.channel(addr)?;
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(timeout);
        match tokio::time::timeout(timeout, ClusterClient::new(ch).status(req)).await {
            Ok(r) => r.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{addr} did not answer within {timeout:?}"
            ))),
        }
    }
}
