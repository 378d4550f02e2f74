//! The Rust client library.
//!
//! A `Client` holds a list of endpoints and remembers which one is the leader.
//! Every call goes to the leader if one is known, else to the next endpoint in
//! turn. When a node answers `UNAVAILABLE` with the leader's address in
//! `x-inflight-leader`, the client follows it at once; when a node is down,
//! times out or knows no leader, the client tries the next endpoint after an
//! exponential backoff with jitter, until `ClientOptions::retry_for` has
//! passed. Other errors (NOT_FOUND, FAILED_PRECONDITION, ...) return at once.
//!
//! Caveat until idempotency tokens land: a mutation retried after a timeout
//! may already have been applied by the first attempt.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::api::LEADER_ADDR_KEY;
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::in_flight_client::InFlightClient;
pub use crate::pb::Consistency;

pub type Result<T> = std::result::Result<T, Status>;

/// Largest response the client accepts (a scan page of large values, or one value).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

fn records(ch: Channel) -> InFlightClient<Channel> {
    InFlightClient::new(ch)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES)
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of one attempt.
    pub request_timeout: Duration,
    /// How long to keep retrying retryable failures before giving up.
    pub retry_for: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(20),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
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
            crate::raft::network::endpoint(e).map_err(|err| {
                Status::invalid_argument(format!("endpoints: {e:?} is not HOST:PORT: {err}"))
            })?;
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                next: AtomicUsize::new(0),
                opts,
            }),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self.inner.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = crate::raft::network::endpoint(addr)
            .map_err(|e| Status::invalid_argument(format!("bad address {addr:?}: {e}")))?
            .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn target(&self) -> String {
        if let Some(l) = self.inner.leader.lock().clone() {
            return l;
        }
        let n = self.inner.endpoints.len();
        self.inner.endpoints[self.inner.next.load(Ordering::Relaxed) % n].clone()
    }

    fn rotate(&self, failed: &str) {
        let mut leader = self.inner.leader.lock();
        if leader.as_deref() == Some(failed) {
            *leader = None;
        }
        self.inner.next.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `call` against the leader (or the next endpoint), following
    /// redirects and retrying retryable failures until `retry_for` passes.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>>>,
    {
        let deadline = Instant::now() + self.inner.opts.retry_for;
        let mut backoff = Duration::from_millis(20);
        let mut redirects = 0;
        loop {
            let target = self.target();
            let attempt = tokio::time::timeout(
                self.inner.opts.request_timeout,
                call(self.channel(&target)?),
            )
            .await;
            let status = match attempt {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded(format!(
                    "{target} did not answer within {:?}",
                    self.inner.opts.request_timeout
                )),
            };
            match status.code() {
                Code::Unavailable => {
                    let hint = status
                        .metadata()
                        .get(LEADER_ADDR_KEY)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match hint {
                        Some(leader) if leader != target && redirects < 3 => {
                            *self.inner.leader.lock() = Some(leader);
                            redirects += 1;
                            continue;
                        }
                        _ => self.rotate(&target),
                    }
                }
                Code::DeadlineExceeded => self.rotate(&target),
                _ => return Err(status),
            }
            redirects = 0;
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
            let pause = backoff + Duration::from_millis(jitter);
            if Instant::now() + pause > deadline {
                return Err(status);
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    pub async fn insert(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<pb::MutationResponse> {
        let req = pb::InsertRequest {
            key: key.into(),
            value: value.into(),
        };
        self.retrying(|ch| {
            let req = req.clone();
            async move { records(ch).insert(req).await }
        })
        .await
    }

    pub async fn update(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        if_version: Option<u64>,
    ) -> Result<pb::MutationResponse> {
        let req = pb::UpdateRequest {
            key: key.into(),
            value: value.into(),
            if_version,
        };
        self.retrying(|ch| {
            let req = req.clone();
            async move { records(ch).update(req).await }
        })
        .await
    }

    pub async fn get(&self, key: &str, consistency: Consistency) -> Result<pb::GetResponse> {
        let req = pb::GetRequest {
            key: key.into(),
            consistency: consistency as i32,
        };
        self.retrying(|ch| {
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
        let req = pb::ScanRequest {
            prefix: prefix.into(),
            limit,
            after_key: after_key.into(),
            consistency: consistency as i32,
        };
        self.retrying(|ch| {
            let req = req.clone();
            async move { records(ch).scan(req).await }
        })
        .await
    }

    pub async fn delete(&self, key: &str, if_version: Option<u64>) -> Result<pb::MutationResponse> {
        let req = pb::DeleteRequest {
            key: key.into(),
            if_version,
        };
        self.retrying(|ch| {
            let req = req.clone();
            async move { records(ch).delete(req).await }
        })
        .await
    }

    pub async fn complete(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        if_version: Option<u64>,
    ) -> Result<pb::MutationResponse> {
        let req = pb::CompleteRequest {
            key: key.into(),
            value,
            if_version,
        };
        self.retrying(|ch| {
            let req = req.clone();
            async move { records(ch).complete(req).await }
        })
        .await
    }

    pub async fn member_list(&self) -> Result<pb::MemberListResponse> {
        self.retrying(|ch| async move {
            ClusterClient::new(ch)
                .member_list(pb::MemberListRequest {})
                .await
        })
        .await
    }

    pub async fn add_learner(&self, id: u64, address: &str) -> Result<pb::MemberListResponse> {
        let req = pb::AddLearnerRequest {
            id,
            address: address.into(),
        };
        self.retrying(|ch| {
            let req = req.clone();
            async move { ClusterClient::new(ch).add_learner(req).await }
        })
        .await
    }

    pub async fn promote(&self, id: u64) -> Result<pb::MemberListResponse> {
        self.retrying(|ch| async move {
            ClusterClient::new(ch)
                .promote(pb::PromoteRequest { id })
                .await
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
