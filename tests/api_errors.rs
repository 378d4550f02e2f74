//! Every error in DESIGN.md's table comes back for its case, with a message
//! that names the field and the limit; garbage on the port does not hurt.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use testkit::cluster::refusing_sink;
use testkit::{Cluster, ClusterOptions};

use inflight::client::Consistency;
use inflight::pb;
use tonic::Code;

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needles: &[&str]) {
    let e = r.expect_err("expected an error");
    assert_eq!(e.code(), code, "code of {e:?}");
    for n in needles {
        assert!(
            e.message().contains(n),
            "message {:?} should mention {n:?}",
            e.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_error_in_the_design_table_comes_back_for_its_case() {
    // The sink refuses, so the COMPLETED record stays to be probed.
    let c = Cluster::start(ClusterOptions {
        extra_args: vec!["--max-value-bytes".into(), "4096".into()],
        sink: Some(refusing_sink()),
        ..Default::default()
    })
    .await;
    let client = c.client();

    client.insert("call/1", "ringing").await.expect("insert");
    // Insert of an existing key.
    assert_status(
        client.insert("call/1", "again").await,
        Code::AlreadyExists,
        &["call/1", "already exists"],
    );
    // Missing keys.
    assert_status(
        client.update("call/404", "x", None).await,
        Code::NotFound,
        &["call/404"],
    );
    assert_status(
        client.get("call/404", Consistency::Linearizable).await,
        Code::NotFound,
        &["call/404"],
    );
    assert_status(
        client.delete("call/404", None).await,
        Code::NotFound,
        &["call/404"],
    );
    assert_status(
        client.complete("call/404", None, None).await,
        Code::NotFound,
        &["call/404"],
    );
    // Version guards.
    assert_status(
        client.update("call/1", "x", Some(9)).await,
        Code::FailedPrecondition,
        &["if_version", "expected version 9", "version 1"],
    );
    assert_status(
        client.delete("call/1", Some(2)).await,
        Code::FailedPrecondition,
        &["if_version"],
    );
    assert_status(
        client.complete("call/1", None, Some(3)).await,
        Code::FailedPrecondition,
        &["if_version"],
    );
    let g = client
        .get("call/1", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        g.record.unwrap().version,
        1,
        "failed guards changed nothing"
    );
    // A COMPLETED record is immutable.
    client
        .complete("call/1", Some(b"done".to_vec()), Some(1))
        .await
        .expect("complete");
    assert_status(
        client.update("call/1", "late", None).await,
        Code::FailedPrecondition,
        &["COMPLETED", "immutable"],
    );
    assert_status(
        client.complete("call/1", None, None).await,
        Code::FailedPrecondition,
        &["COMPLETED"],
    );
    assert_status(
        client.delete("call/1", None).await,
        Code::FailedPrecondition,
        &["COMPLETED"],
    );
    assert_status(
        client.insert("call/1", "new").await,
        Code::AlreadyExists,
        &["COMPLETED"],
    );

    // Bad input names the field and the limit.
    let long_key = "k".repeat(513);
    assert_status(
        client.insert(&long_key, "x").await,
        Code::InvalidArgument,
        &["key", "513", "512"],
    );
    assert_status(
        client.insert("", "x").await,
        Code::InvalidArgument,
        &["key", "empty"],
    );
    assert_status(
        client.insert("a\0b", "x").await,
        Code::InvalidArgument,
        &["key", "NUL"],
    );
    assert_status(
        client.insert("big", vec![b'x'; 4097]).await,
        Code::InvalidArgument,
        &["value", "4097", "4096"],
    );
    assert_status(
        client.update("call/2", vec![b'x'; 5000], None).await,
        Code::InvalidArgument,
        &["value", "4096"],
    );
    assert_status(
        client.update("call/2", "x", Some(0)).await,
        Code::InvalidArgument,
        &["if_version"],
    );
    assert_status(
        client
            .scan("call/", 1_000_000, "", Consistency::Linearizable)
            .await,
        Code::InvalidArgument,
        &["limit", "10000"],
    );
    assert_status(
        client.get(&long_key, Consistency::Stale).await,
        Code::InvalidArgument,
        &["key", "512"],
    );
    // Nothing partial was written by any rejected request.
    let all = c.scan_all(&client, "", Consistency::Linearizable).await;
    assert_eq!(all.len(), 1, "only call/1 exists: {all:?}");
    assert!(client.get("big", Consistency::Stale).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_answers_mutation_with_unavailable_and_the_leader_address() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[&follower].grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raw = pb::in_flight_client::InFlightClient::new(channel);
    let e = raw
        .insert(pb::InsertRequest {
            key: "call/9".into(),
            value: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("a follower does not accept writes");
    assert_eq!(e.code(), Code::Unavailable);
    let hint = e
        .metadata()
        .get("x-inflight-leader")
        .expect("leader address in metadata")
        .to_str()
        .unwrap();
    assert_eq!(hint, c.nodes[&leader].grpc);
    // A LEASE read on a follower is redirected too; linearizable and stale
    // reads are served by the follower itself (nothing there).
    let e = raw
        .get(pb::GetRequest {
            key: "call/9".into(),
            consistency: pb::Consistency::Lease as i32,
            ..Default::default()
        })
        .await
        .expect_err("lease reads go to the leader");
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(
        e.metadata()
            .get("x-inflight-leader")
            .map(|v| v.to_str().unwrap()),
        Some(c.nodes[&leader].grpc.as_str())
    );
    let linearizable = raw
        .get(pb::GetRequest {
            key: "call/9".into(),
            consistency: pb::Consistency::Linearizable as i32,
            ..Default::default()
        })
        .await
        .expect_err("nothing there");
    assert_eq!(linearizable.code(), Code::NotFound, "{linearizable:?}");
    let stale = raw
        .get(pb::GetRequest {
            key: "call/9".into(),
            consistency: pb::Consistency::Stale as i32,
            ..Default::default()
        })
        .await
        .expect_err("nothing there");
    assert_eq!(stale.code(), Code::NotFound);
    // The library client follows the hint when it only knows the follower.
    let follow = inflight::client::Client::new([c.nodes[&follower].grpc.clone()]).unwrap();
    follow
        .insert("call/9", "x")
        .await
        .expect("client follows the leader hint");
}

/// A message whose field 1 is raw bytes, to put invalid UTF-8 where a key goes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawInsert {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_the_grpc_port_does_not_crash_the_node() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let addr = c.nodes[&leader].grpc.clone();
    let peer_addr = c.nodes[&leader].peer.clone();

    // Raw bytes, with and without an HTTP/2 preface, on both gRPC ports.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for round in 0..40 {
        let mut junk = Vec::with_capacity(65_536);
        for _ in 0..65_536 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(seed as u8);
        }
        let target = if round < 20 { &addr } else { &peer_addr };
        if let Ok(mut s) = TcpStream::connect(target) {
            if round % 2 == 1 {
                let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            }
            let _ = s.write_all(&junk);
        }
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Garbage inside well-formed peer RPCs, on the peer port.
    let peer_channel = tonic::transport::Endpoint::from_shared(format!("http://{peer_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut peer = pb::raft_client::RaftClient::new(peer_channel);
    for call in 0..3 {
        let msg = pb::RaftMessage {
            payload: vec![0xff; 100 + call],
            ..Default::default()
        };
        let r = match call {
            0 => peer.vote(msg).await,
            1 => peer.append_entries(msg).await,
            _ => peer.transfer_leader(msg).await,
        };
        assert_eq!(
            r.expect_err("garbage payload").code(),
            Code::InvalidArgument
        );
    }
    let chunks = futures::stream::iter(vec![pb::SnapshotChunk {
        meta: vec![1, 2, 3],
        data: vec![4, 5, 6],
    }]);
    let e = peer
        .install_snapshot(chunks)
        .await
        .expect_err("garbage snapshot");
    assert_eq!(e.code(), Code::InvalidArgument);
    let stream = futures::stream::iter(vec![pb::RaftMessage {
        payload: vec![7; 9],
        ..Default::default()
    }]);
    if let Ok(resp) = peer.stream_append(stream).await {
        use futures::StreamExt;
        let mut s = resp.into_inner();
        while let Some(item) = s.next().await {
            assert!(
                item.is_ok(),
                "no reply to an undecodable request, only an end of stream"
            );
        }
    }

    // Invalid UTF-8 where the key goes.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/inflight.v1.InFlight/Insert");
    let r: Result<tonic::Response<pb::MutationResponse>, _> = grpc
        .unary(
            tonic::Request::new(RawInsert {
                key: vec![0xc3, 0x28, 0xa0, 0xa1],
            }),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert!(r.is_err(), "invalid UTF-8 key is refused");

    assert!(c.is_running(leader), "the node survived all of it");
    let client = c.client();
    client
        .insert("still/alive", "yes")
        .await
        .expect("the node still serves writes");
    assert_eq!(
        client
            .get("still/alive", Consistency::Linearizable)
            .await
            .unwrap()
            .record
            .unwrap()
            .value,
        &b"yes"[..]
    );
    assert_eq!(
        c.wait_leader(Duration::from_secs(5)).await,
        leader,
        "no leader change either"
    );
}
