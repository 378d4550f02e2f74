//! Receiving a snapshot from a peer: a stream of chunks with bounds.
//!
//! A snapshot arrives as one gRPC stream: the first chunk carries the
//! encoded (vote, meta), the rest carry the blob. The receiver holds the
//! whole blob in memory (counted in the memory budget's `snapshot` part)
//! until openraft installs it, so a stream that never ends, or that ends
//! only after sending more than any real snapshot, would hold memory and a
//! task forever. Three bounds end such a stream with a clear status, and
//! dropping what was received releases its reservation:
//!
//! - size: at most [`codec::SNAPSHOT_BYTES`] in all (`RESOURCE_EXHAUSTED`);
//! - idle: each chunk must arrive within [`CHUNK_TIMEOUT`], the same time
//!   openraft gives the sender to deliver one (`install_snapshot_timeout`):
//!   a healthy sender has given up by then anyway (`DEADLINE_EXCEEDED`);
//! - rate: the whole stream may take [`CHUNK_TIMEOUT`] plus the time to
//!   receive what arrived at [`MIN_RATE`], so a sender trickling a byte per
//!   idle period is cut off too (`DEADLINE_EXCEEDED`). For the largest
//!   snapshot that is about 4.5 hours; for a real one, minutes.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tonic::Status;

use super::{SnapshotMeta, Vote};
use crate::codec;
use crate::memory::{Reservation, Reservations};
use crate::pb::SnapshotChunk;

/// How long the receiver waits for the next chunk; also openraft's
/// `install_snapshot_timeout` (see `raft::node`), the time a sender gets to
/// deliver one.
pub(super) const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// The slowest average a snapshot stream may keep up, in bytes per second:
/// 1 MiB/s, a hundredth of a gigabit link. The leader sends chunks of 1 MiB,
/// so this is one chunk per second on average.
pub(super) const MIN_RATE: u64 = 1 << 20;

/// The bounds a received snapshot stream is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamLimits {
    pub max_bytes: usize,
    pub chunk_timeout: Duration,
    pub min_rate: u64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_bytes: codec::SNAPSHOT_BYTES,
            chunk_timeout: CHUNK_TIMEOUT,
            min_rate: MIN_RATE,
        }
    }
}

impl StreamLimits {
    /// When the stream must be done if it has received `bytes` by now.
    fn deadline(&self, start: Instant, bytes: usize) -> Instant {
        // Capped at a year so that the sum cannot overflow an `Instant`.
        let secs = (bytes as f64 / self.min_rate.max(1) as f64).min(365.0 * 86_400.0);
        start + self.chunk_timeout + Duration::from_secs_f64(secs)
    }
}

/// A snapshot received whole; `held` counts its blob until dropped.
pub(crate) struct Received {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
    pub held: Reservation,
}

/// Reads a snapshot stream within `limits`, reserving what it holds in
/// `reservations`. On any error the stream is dropped and the reservation
/// with it.
pub(crate) async fn receive<S>(
    mut chunks: S,
    reservations: &Reservations,
    limits: StreamLimits,
) -> Result<Received, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
{
    let start = Instant::now();
    let first = next(&mut chunks, &limits, start, 0)
        .await?
        .ok_or_else(|| Status::invalid_argument("snapshot stream is empty"))?;
    let (vote, meta): (Vote, SnapshotMeta) = codec::decode(&first.meta)
        .map_err(|e| Status::invalid_argument(format!("snapshot meta: {e}")))?;
    let mut data = Vec::new();
    let mut held = reservations.reserve(0);
    let mut chunk = Some(first);
    while let Some(c) = chunk {
        if data.len().saturating_add(c.data.len()) > limits.max_bytes {
            return Err(Status::resource_exhausted(format!(
                "snapshot exceeds the limit of {} bytes (received {} so far, then a chunk of {})",
                limits.max_bytes,
                data.len(),
                c.data.len()
            )));
        }
        data.extend_from_slice(&c.data);
        held.grow(c.data.len() as u64);
        chunk = next(&mut chunks, &limits, start, data.len()).await?;
    }
    Ok(Received {
        vote,
        meta,
        data,
        held,
    })
}

/// The next chunk, or `None` at the end of the stream; an error if it does
/// not come within the idle timeout or the stream's rate deadline.
async fn next<S>(
    chunks: &mut S,
    limits: &StreamLimits,
    start: Instant,
    received: usize,
) -> Result<Option<SnapshotChunk>, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
{
    let idle = Instant::now() + limits.chunk_timeout;
    let overall = limits.deadline(start, received);
    match tokio::time::timeout_at(idle.min(overall), chunks.next()).await {
        Ok(chunk) => chunk.transpose(),
        Err(_) if overall <= idle => Err(Status::deadline_exceeded(format!(
            "snapshot stream too slow: {received} bytes in {:.1} s, under the minimum average \
             of {} bytes/s",
            start.elapsed().as_secs_f64(),
            limits.min_rate
        ))),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "snapshot stream stalled: no chunk for {} ms after {received} bytes",
            limits.chunk_timeout.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    //! A real tonic server and client over TCP; the server's InstallSnapshot
    //! is `receive` with small bounds, so stalls and overruns take
    //! milliseconds. (The peer service calls the same `receive`.)

    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Code;

    use super::*;
    use crate::pb::raft_client::RaftClient;
    use crate::pb::RaftMessage;
    use crate::raft::test_peer::TestPeer;

    /// Starts a receiver on a local port; returns a client and the
    /// receiver's reservations.
    async fn start(limits: StreamLimits) -> (RaftClient<tonic::transport::Channel>, Reservations) {
        let snapshots = Reservations::default();
        let held = snapshots.clone();
        let client = TestPeer::install_snapshot(move |chunks| {
            let held = held.clone();
            Box::pin(async move {
                let got = receive(chunks, &held, limits).await?;
                Ok(RaftMessage {
                    payload: (got.data.len() as u64).to_le_bytes().to_vec(),
                    ..Default::default()
                })
            })
        })
        .serve()
        .await;
        (client, snapshots)
    }

    fn meta_chunk() -> SnapshotChunk {
        let vote: Vote = openraft::impls::Vote::new(1, 1);
        SnapshotChunk {
            meta: codec::encode(&(vote, SnapshotMeta::default())).unwrap(),
            data: Vec::new(),
        }
    }

    fn data(n: usize) -> SnapshotChunk {
        SnapshotChunk {
            meta: Vec::new(),
            data: vec![7; n],
        }
    }

    async fn until_reserved(snapshots: &Reservations, bytes: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while snapshots.bytes() != bytes {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the receiver reserves what it received");
    }

    fn limits(max_bytes: usize, chunk_ms: u64, min_rate: u64) -> StreamLimits {
        StreamLimits {
            max_bytes,
            chunk_timeout: Duration::from_millis(chunk_ms),
            min_rate,
        }
    }

    #[tokio::test]
    async fn a_whole_stream_is_received_and_its_reservation_ends_with_it() {
        let (mut client, snapshots) = start(limits(1 << 20, 5_000, 1)).await;
        let chunks = futures::stream::iter([meta_chunk(), data(300), data(200)]);
        let resp = client.install_snapshot(chunks).await.unwrap().into_inner();
        assert_eq!(resp.payload, 500u64.to_le_bytes());
        assert_eq!(snapshots.bytes(), 0);
    }

    #[tokio::test]
    async fn a_stalled_stream_is_refused_and_releases_its_reservation() {
        let (mut client, snapshots) = start(limits(1 << 20, 300, 1)).await;
        let (tx, rx) = mpsc::channel(4);
        tx.send(meta_chunk()).await.unwrap();
        tx.send(data(1000)).await.unwrap();
        let call =
            tokio::spawn(async move { client.install_snapshot(ReceiverStream::new(rx)).await });
        until_reserved(&snapshots, 1000).await;
        // `tx` stays open and silent: the stream stalls.
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("stalled"), "{status:?}");
        assert!(status.message().contains("after 1000 bytes"), "{status:?}");
        assert_eq!(snapshots.bytes(), 0);
        drop(tx);
    }

    #[tokio::test]
    async fn a_trickling_stream_is_refused_for_its_rate() {
        // Each chunk comes well within the idle timeout, but 10 bytes per
        // 50 ms is far under the 10,000 bytes/s minimum.
        let (mut client, snapshots) = start(limits(1 << 20, 400, 10_000)).await;
        let (tx, rx) = mpsc::channel(4);
        tx.send(meta_chunk()).await.unwrap();
        let feeder = tokio::spawn(async move {
            while tx.send(data(10)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let status = client
            .install_snapshot(ReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("too slow"), "{status:?}");
        assert_eq!(snapshots.bytes(), 0);
        feeder.abort();
    }

    #[tokio::test]
    async fn a_stream_over_the_bound_is_refused_and_releases_its_reservation() {
        let (mut client, snapshots) = start(limits(1000, 5_000, 1)).await;
        let (tx, rx) = mpsc::channel(4);
        tx.send(meta_chunk()).await.unwrap();
        tx.send(data(600)).await.unwrap();
        let call =
            tokio::spawn(async move { client.install_snapshot(ReceiverStream::new(rx)).await });
        until_reserved(&snapshots, 600).await;
        tx.send(data(600)).await.unwrap();
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("limit of 1000 bytes"),
            "{status:?}"
        );
        assert_eq!(snapshots.bytes(), 0);
    }

    #[tokio::test]
    async fn a_stream_whose_meta_does_not_decode_is_refused() {
        let (mut client, snapshots) = start(limits(1 << 20, 5_000, 1)).await;
        let garbage = SnapshotChunk {
            meta: vec![0xff; 100],
            data: vec![1; 10],
        };
        let status = client
            .install_snapshot(futures::stream::iter([garbage]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("snapshot meta"), "{status:?}");
        assert_eq!(snapshots.bytes(), 0);
    }
}
