//! A peer for tests: a real tonic server on a loopback port whose
//! `StreamAppend` and `InstallSnapshot` are the test's own closures; every
//! other peer RPC answers UNIMPLEMENTED.

use std::pin::Pin;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::raft_client::RaftClient;
use crate::pb::raft_server::{Raft, RaftServer};
use crate::pb::{RaftMessage, SnapshotChunk};

pub type Answers = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;
type AppendFn = Arc<dyn Fn(Streaming<RaftMessage>) -> Answers + Send + Sync>;
type SnapshotFn = Arc<
    dyn Fn(Streaming<SnapshotChunk>) -> BoxFuture<'static, Result<RaftMessage, Status>>
        + Send
        + Sync,
>;

#[derive(Clone, Default)]
pub struct TestPeer {
    stream_append: Option<AppendFn>,
    install_snapshot: Option<SnapshotFn>,
}

impl TestPeer {
    pub fn stream_append(
        f: impl Fn(Streaming<RaftMessage>) -> Answers + Send + Sync + 'static,
    ) -> TestPeer {
        TestPeer {
            stream_append: Some(Arc::new(f)),
            ..TestPeer::default()
        }
    }

    pub fn install_snapshot(
        f: impl Fn(Streaming<SnapshotChunk>) -> BoxFuture<'static, Result<RaftMessage, Status>>
            + Send
            + Sync
            + 'static,
    ) -> TestPeer {
        TestPeer {
            install_snapshot: Some(Arc::new(f)),
            ..TestPeer::default()
        }
    }

    /// Serves this peer on a free loopback port; returns a client of it.
    pub async fn serve(self) -> RaftClient<Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(self))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        RaftClient::connect(format!("http://{addr}")).await.unwrap()
    }
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not served by this test peer"))
}

#[tonic::async_trait]
impl Raft for TestPeer {
    type StreamAppendStream = Answers;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Answers>, Status> {
        match &self.stream_append {
            Some(f) => Ok(Response::new(f(req.into_inner()))),
            None => unimplemented(),
        }
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        match &self.install_snapshot {
            Some(f) => f(req.into_inner()).await.map(Response::new),
            None => unimplemented(),
        }
    }

    async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        unimplemented()
    }

    async fn pre_vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        unimplemented()
    }

    async fn append_entries(
        &self,
        _: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        unimplemented()
    }

    async fn transfer_leader(
        &self,
        _: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        unimplemented()
    }

    async fn read_index(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        unimplemented()
    }

    async fn forward(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        unimplemented()
    }
}
