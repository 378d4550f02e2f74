//! Outgoing peer RPCs: openraft's `RaftNetworkV2` over tonic.
//!
//! One HTTP/2 channel per peer address, created lazily and shared by every
//! replication stream to that peer. Each channel has a connect timeout and
//! HTTP/2 keepalive pings, so a link that silently drops packets is noticed
//! within seconds instead of wedging a stream forever; unary calls also carry
//! openraft's per-RPC deadline. A peer that cannot be reached is reported as
//! `Unreachable`, which makes openraft back off instead of spinning.
//!
//! With peer TLS (`--peer-cert-file` ...), every channel is `https`: the node
//! presents its peer certificate and trusts only the cluster CA. After a
//! reload of those files (SIGHUP) the next call to a peer builds a new
//! channel, so new connections present the new certificate.
//!
//! Replication uses `StreamAppend`, one bidirectional gRPC stream per
//! follower: append requests go out back to back without waiting for each
//! response (pipelining), and the follower answers in order.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::contact::Echoes;
use super::heartbeat::HeartbeatLink;
use super::{NodeId, PeerNode, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::codec;
use crate::metrics::{PeerLabels, METRICS};
use crate::pb::raft_client::RaftClient;
use crate::pb::{Freshness, RaftMessage, SnapshotChunk};
use crate::wire::ReloadableClientTls;

/// Size of the pieces a snapshot is streamed in.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Creates (and caches) the channels to peers.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    /// Per peer address: the channel, and the generation of the TLS
    /// settings it was built with.
    channels: Arc<Mutex<HashMap<String, (u64, Channel)>>>,
    /// Source address of outgoing peer connections (`--peer-source-ip`).
    source_ip: Option<IpAddr>,
    /// The cluster CA and this node's certificate, when peers speak TLS.
    tls: Option<ReloadableClientTls>,
    /// This node's Raft and table, once it runs: appends echo the followers'
    /// clock readings only while it leads with a quorum (`contact`).
    raft: Arc<std::sync::OnceLock<(super::Raft, Arc<crate::state::Table>)>>,
    /// The followers' clock readings, as their answers brought them.
    echoes: Arc<Echoes>,
}

impl PeerNetwork {
    pub fn new(source_ip: Option<IpAddr>, tls: Option<ReloadableClientTls>) -> Self {
        PeerNetwork {
            channels: Arc::default(),
            source_ip,
            tls,
            raft: Arc::default(),
            echoes: Arc::default(),
        }
    }

    /// The channel to `addr`, built anew once the TLS settings were
    /// reloaded (SIGHUP), so that new connections present the new
    /// certificate; calls still running keep the old channel.
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let generation = self.tls.as_ref().map_or(0, ReloadableClientTls::generation);
        let mut channels = self.channels.lock();
        if let Some((g, c)) = channels.get(addr) {
            if *g == generation {
                return Ok(c.clone());
            }
        }
        // Only a new channel needs the settings themselves. Read after the
        // generation, they are at least as new as it says.
        let tls = self.tls.as_ref().map(ReloadableClientTls::current);
        let generation = tls.as_ref().map_or(0, |(g, _)| *g);
        let c = crate::wire::secure_endpoint(addr, tls.as_ref().map(|(_, t)| t.config()))
            .map_err(|e| format!("invalid peer address {addr:?}: {e}"))?
            .local_address(self.source_ip)
            .connect_lazy();
        channels.insert(addr.to_string(), (generation, c.clone()));
        Ok(c)
    }
}

impl PeerNetwork {
    /// From now on, appends sent through this network echo followers' clock
    /// readings while `raft` leads (`RaftMessage::fresh_as_of`); `table` is
    /// its state machine's.
    pub(super) fn attach(&self, raft: super::Raft, table: Arc<crate::state::Table>) {
        let _ = self.raft.set((raft, table));
    }

    /// What an append to `target` echoes as `fresh_as_of` (`contact`): on a
    /// leader that has applied an entry of its own term, the newest reading
    /// of `target`'s clock that arrived before the leader sent what a quorum
    /// last acknowledged, with the leader's applied index now.
    fn fresh_as_of(&self, target: NodeId) -> Option<Freshness> {
        let (raft, table) = self.raft.get()?;
        let rx = raft.metrics();
        // Read `now` first: the instant computed is then no later than the
        // real one (a reading that arrived just after it does not count).
        let now = tokio::time::Instant::now();
        let quorum_acked = {
            let m = openraft::async_runtime::WatchReceiver::borrow_watched(&rx);
            now.checked_sub(super::contact::leader_confirmed_ago(&m)??)?
        };
        let reading = self.echoes.echo(target, quorum_acked)?;
        // Read after the reading arrived: every write this leader
        // acknowledged before it is applied here by now.
        Some(Freshness {
            reading: Some(reading),
            index: table.revision(),
        })
    }

    /// Asks the leader at peer address `addr` for its read index (follower
    /// reads), waiting at most `timeout`.
    pub(super) async fn read_index(
        &self,
        addr: &str,
        req: &super::follower_read::ReadIndexRequest,
        timeout: Duration,
    ) -> Result<super::follower_read::ReadIndexResponse, String> {
        let payload = codec::encode(req).map_err(|e| e.to_string())?;
        let reply = self
            .unary(addr, payload, timeout, |mut c, r| async move {
                c.read_index(r).await
            })
            .await
            .map_err(|e| e.to_string())?;
        codec::decode(&reply).map_err(|e| format!("bad reply: {e}"))
    }

    /// Sends a forwarded write (opaque here, see `api::forward`) to the
    /// leader at peer address `addr`; its answer, also opaque.
    pub(super) async fn forward(
        &self,
        addr: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, UnaryError> {
        self.unary(addr, payload, timeout, |mut c, r| async move {
            c.forward(r).await
        })
        .await
    }

    /// One unary peer RPC with `payload`, answered within `timeout` (which
    /// holds even while the connection is still being made).
    async fn unary<F, Fut>(
        &self,
        addr: &str,
        payload: Vec<u8>,
        timeout: Duration,
        rpc: F,
    ) -> Result<Vec<u8>, UnaryError>
    where
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftMessage>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let channel = self.channel(addr).map_err(UnaryError::NotSent)?;
        let mut request = tonic::Request::new(RaftMessage {
            payload,
            ..Default::default()
        });
        request.set_timeout(timeout);
        let client = RaftClient::new(channel)
            .max_decoding_message_size(crate::raft::PEER_MESSAGE_BYTES)
            .max_encoding_message_size(crate::raft::PEER_MESSAGE_BYTES);
        match tokio::time::timeout(timeout, rpc(client, request)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().payload),
            Ok(Err(s)) => Err(UnaryError::Status(s)),
            Err(_) => Err(UnaryError::Timeout(timeout)),
        }
    }
}

/// Why a unary peer RPC got no answer.
#[derive(Clone, Debug)]
pub enum UnaryError {
    /// Nothing was sent (the peer address does not parse, the request
    /// could not be encoded).
    NotSent(String),
    /// The peer (or the transport on the way) answered with an error.
    Status(tonic::Status),
    /// No answer in time: the request may or may not have arrived.
    Timeout(Duration),
}

impl std::fmt::Display for UnaryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnaryError::NotSent(e) => f.write_str(e),
            UnaryError::Status(s) => write!(f, "{:?}: {}", s.code(), s.message()),
            UnaryError::Timeout(t) => write!(f, "no answer within {t:?}"),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        if !node.addr.contains('/') {
            tracing::error!(
                target_id = target,
                address = %node.addr,
                "this member's address predates the separate peer port: it names only its client \
                 port, which serves no Raft; remove the member and add it back as CLIENT/PEER"
            );
        }
        PeerClient {
            target,
            addr: super::MemberAddr::stored(&node.addr).peer,
            network: self.clone(),
            heartbeat: None,
        }
    }

    /// Heartbeats (and the leadership probes of ReadIndex rounds) go on one
    /// long-lived stream per follower (`heartbeat`), not a stream each.
    async fn new_heartbeat_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        PeerClient {
            heartbeat: Some(HeartbeatLink::default()),
            ..self.new_client(target, node).await
        }
    }
}

/// The connection to one peer. The channel is looked up for every call (a
/// map lookup): after a TLS reload the next call gets a new one.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    network: PeerNetwork,
    /// Set on the heartbeat client: its one-request streams ride one stream.
    heartbeat: Option<HeartbeatLink>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

pub(super) fn unreachable(msg: impl Into<String>) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&PeerError(msg.into())))
}

pub(super) fn network(msg: impl Into<String>) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&PeerError(msg.into())))
}

/// Transport failures mean the peer is unreachable (back off); anything else is
/// a network error on a reachable peer.
pub(super) fn from_status(s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            unreachable(format!("{}: {}", s.code(), s.message()))
        }
        _ => network(format!("{}: {}", s.code(), s.message())),
    }
}

fn message<T: Serialize>(
    value: &T,
    timeout: Option<Duration>,
) -> Result<tonic::Request<RaftMessage>, RPCError<TypeConfig>> {
    let payload = codec::encode(value).map_err(|e| network(e.to_string()))?;
    let mut req = tonic::Request::new(RaftMessage {
        payload,
        ..Default::default()
    });
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    Ok(req)
}

fn reply<T: DeserializeOwned>(
    resp: tonic::Response<RaftMessage>,
) -> Result<T, RPCError<TypeConfig>> {
    codec::decode(&resp.into_inner().payload)
        .map_err(|e| network(format!("bad reply from peer: {e}")))
}

impl PeerClient {
    fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        let channel = self.network.channel(&self.addr).map_err(unreachable)?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(crate::raft::PEER_MESSAGE_BYTES)
            .max_encoding_message_size(crate::raft::PEER_MESSAGE_BYTES))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut req = message(&rpc, Some(option.hard_ttl()))?;
        req.get_mut().fresh_as_of = self.network.fresh_as_of(self.target);
        let resp = self
            .client()?
            .append_entries(req)
            .await
            .map_err(from_status)?;
        self.network
            .echoes
            .arrived(self.target, resp.get_ref().clock);
        reply(resp)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        if let Some(link) = self.heartbeat.clone() {
            return Box::pin(async move {
                let client = self.client()?;
                let requests: Vec<AppendEntriesRequest<TypeConfig>> = input.collect().await;
                let mut answers = Vec::with_capacity(requests.len());
                for req in &requests {
                    let mut client = client.clone();
                    let open = |rx| async move {
                        client
                            .stream_append(tokio_stream::wrappers::ReceiverStream::new(rx))
                            .await
                            .map(tonic::Response::into_inner)
                            .map_err(from_status)
                    };
                    let echo = self.network.fresh_as_of(self.target);
                    let answer = link.send(req, echo, open).await.map(|(result, clock)| {
                        self.network.echoes.arrived(self.target, clock);
                        result
                    });
                    let failed = answer.is_err();
                    answers.push(answer);
                    if failed {
                        break;
                    }
                }
                Ok(Box::pin(futures::stream::iter(answers)) as BoxStream<'s, _>)
            });
        }
        Box::pin(async move {
            let mut client = self.client()?;
            // Responses come back in request order: the send times queued here
            // give each response's round trip.
            let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
            let rtt = METRICS
                .peer_rtt_seconds
                .get_or_create(&PeerLabels {
                    peer: self.target.to_string(),
                })
                .clone();
            let sent_out = sent.clone();
            let (peers, target) = (self.network.clone(), self.target);
            let echoes = self.network.echoes.clone();
            // An entry that cannot be encoded goes out empty; the peer rejects it
            // and openraft restarts replication from a known point.
            let outgoing = input.map(move |req| {
                sent_out.lock().push_back(Instant::now());
                RaftMessage {
                    payload: codec::encode(&req).unwrap_or_default(),
                    fresh_as_of: peers.fresh_as_of(target),
                    ..Default::default()
                }
            });
            let responses = client
                .stream_append(outgoing)
                .await
                .map_err(from_status)?
                .into_inner();
            let results = responses.map(move |item| {
                if let Some(t) = sent.lock().pop_front() {
                    rtt.observe(t.elapsed().as_secs_f64());
                }
                let msg = item.map_err(from_status)?;
                echoes.arrived(target, msg.clock);
                codec::decode::<StreamAppendResult<TypeConfig>>(&msg.payload)
                    .map_err(|e| network(format!("bad stream-append reply from peer: {e}")))
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = message(&rpc, Some(option.hard_ttl()))?;
        reply(self.client()?.vote(req).await.map_err(from_status)?)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = message(&rpc, Some(option.hard_ttl()))?;
        reply(self.client()?.pre_vote(req).await.map_err(from_status)?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let meta = codec::encode(&(vote, &snapshot.meta)).map_err(|e| network(e.to_string()))?;
        let data = Arc::new(snapshot.snapshot);
        let total = data.len();
        let chunks = futures::stream::iter(
            std::iter::once(SnapshotChunk {
                meta,
                data: Vec::new(),
            })
            .chain(
                (0..total.div_ceil(SNAPSHOT_CHUNK)).map(move |i| SnapshotChunk {
                    meta: Vec::new(),
                    data: data[i * SNAPSHOT_CHUNK..((i + 1) * SNAPSHOT_CHUNK).min(total)].to_vec(),
                }),
            ),
        );
        let send = client.install_snapshot(chunks);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            resp = send => {
                let resp = resp.map_err(from_status)?;
                Ok(reply(resp)?)
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = message(&req, Some(option.hard_ttl()))?;
        reply(
            self.client()?
                .transfer_leader(req)
                .await
                .map_err(from_status)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::cli::certs::{init, CertDir, InitOptions};
    use crate::tls::{PemFile, Port, PortFiles, ServerTls, TlsIncoming};

    /// The serial of the certificate of every client that completed a
    /// handshake, in order.
    async fn recording_server(
        dir: &CertDir,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let node1 = dir.node(1);
        let files = PortFiles {
            cert: PemFile::new("--peer-cert-file", &node1.cert),
            key: PemFile::new("--peer-key-file", &node1.key),
            trusted_ca: Some(PemFile::new("--peer-trusted-ca-file", dir.ca().cert)),
        };
        let tls = ServerTls::new(Port::Peer, files, Vec::new()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut incoming = TlsIncoming::new(TcpListenerStream::new(listener), tls);
            while let Some(Ok(stream)) = incoming.next().await {
                let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
                let (_, cert) =
                    <x509_parser::prelude::X509Certificate as x509_parser::prelude::FromDer<
                        _,
                    >>::from_der(&leaf)
                    .unwrap();
                let _ = tx.send(cert.raw_serial().to_vec());
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn after_a_reload_new_peer_connections_present_the_new_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path());
        init(dir.path(), &InitOptions::default()).unwrap();
        let (addr, mut seen) = recording_server(&dir).await;
        let node2 = dir.node(2);
        let tls =
            ReloadableClientTls::load(&dir.ca().cert, Some((&node2.cert, &node2.key))).unwrap();
        let network = PeerNetwork::new(None, Some(tls.clone()));
        let vote = |network: PeerNetwork| {
            let addr = addr.clone();
            async move {
                let req = tonic::Request::new(RaftMessage {
                    payload: vec![],
                    ..Default::default()
                });
                // The server records the handshake and hangs up: the call fails.
                let _ = RaftClient::new(network.channel(&addr).unwrap())
                    .vote(req)
                    .await;
            }
        };
        vote(network.clone()).await;
        let first = seen.recv().await.expect("a handshake");

        // node-2 reissued (a new key and serial), then reloaded.
        std::fs::remove_file(&node2.cert).unwrap();
        std::fs::remove_file(&node2.key).unwrap();
        init(dir.path(), &InitOptions::default()).unwrap();
        tls.reload().unwrap();
        vote(network.clone()).await;
        let second = seen.recv().await.expect("a handshake");
        assert_ne!(
            first, second,
            "the new connection presents the new certificate"
        );
    }
}
