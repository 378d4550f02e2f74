//! How fast a client gets going again when the leader stops answering, on
//! real 3-node clusters: the hedged second attempt, the follower that holds
//! a call until it can name the next leader, and the endpoints a client
//! learns from the membership.

use std::time::{Duration, Instant};

use inflight::client::{Client, ClientOptions, Consistency};
use inflight::pb;
use inflight::pb::in_flight_client::InFlightClient;
use inflight::wire::{LEADER_ADDR_KEY, WAIT_LEADER_KEY};
use testkit::{wait_for, Cluster, ClusterOptions};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

/// A write sent to a leader that froze (SIGSTOP: its connections stay open,
/// nothing answers) is sent to another node as well after `hedge_after`,
/// and goes through the next leader long before the first attempt's own
/// deadline; the request id makes it apply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_stuck_on_a_frozen_leader_goes_through_the_next_leader_before_its_attempt_times_out(
) {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let old = c.wait_leader(Duration::from_secs(10)).await;
    let attempt_deadline = Duration::from_secs(60);
    let client = Client::with_options(
        c.endpoints(),
        ClientOptions {
            request_timeout: attempt_deadline,
            retry_for: attempt_deadline,
            hedge_after: Some(Duration::from_millis(100)),
            tls: c.client_tls(),
            ..ClientOptions::default()
        },
    )
    .expect("client");
    // The client learns the leader, so the next write goes straight to it.
    client.insert("warm", "x").await.expect("insert before");

    c.pause(old);
    let started = Instant::now();
    let m = client
        .insert("during-freeze", "y")
        .await
        .expect("the write goes through the next leader");
    assert!(
        started.elapsed() < attempt_deadline,
        "answered after {:?}: the client waited out its attempt on the frozen leader instead of hedging",
        started.elapsed()
    );
    assert_eq!(m.record.expect("the written record").version, 1);
    let new = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new, old, "the frozen node no longer leads");

    // Back from the freeze, the old leader follows; the write is there once.
    c.resume(old);
    let r = client
        .get("during-freeze", Consistency::Linearizable)
        .await
        .expect("get");
    let r = r.record.expect("the record exists");
    assert_eq!((r.value.as_ref(), r.version), (&b"y"[..], 1));
}

/// A follower that has stopped hearing from the leader does not send a
/// call that asks it to wait (`x-inflight-wait-leader`, what the client puts
/// on hedges and retries) back to the silent leader: it holds the call until
/// the election settles and names the new leader (or serves the call itself
/// if it won). Without the header it answers at once, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_lost_the_leader_names_the_next_one_instead_of_the_silent_one() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let old = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.members().into_iter().find(|id| *id != old).unwrap();
    let old_address = c.nodes[&old].grpc.clone();
    let mut raw = InFlightClient::connect(format!("http://{}", c.nodes[&follower].grpc))
        .await
        .expect("connect to the follower");
    let insert = |key: &str, wait: bool| {
        let mut r = Request::new(pb::InsertRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        if wait {
            r.metadata_mut()
                .insert(WAIT_LEADER_KEY, MetadataValue::from_static("1"));
        }
        r
    };
    let named = |e: &tonic::Status| {
        e.metadata()
            .get(LEADER_ADDR_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // While the leader is alive, the follower names it at once, asked to
    // wait or not.
    for wait in [false, true] {
        let e = raw
            .insert(insert("before", wait))
            .await
            .expect_err("a follower does not write");
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert_eq!(named(&e).as_deref(), Some(old_address.as_str()));
    }

    c.pause(old);
    // Past the point where the follower suspects the leader (150 ms, the
    // election timeout's minimum), and before an election can finish (the
    // old leader's 300 ms lease, then 150..300 ms).
    wait_for(
        Duration::from_secs(5),
        "the follower to miss the leader for 150 ms",
        || async {
            let s = c.status(follower).await?;
            (s.leader_contact_ms? >= 150).then_some(())
        },
    )
    .await;
    let asked = Instant::now();
    match raw.insert(insert("after", true)).await {
        Ok(_) => assert_eq!(
            c.wait_leader(Duration::from_secs(10)).await,
            follower,
            "a follower that wrote must have become the leader"
        ),
        Err(e) => {
            let waited = asked.elapsed();
            assert_eq!(e.code(), Code::Unavailable, "{e}");
            let named = named(&e);
            if named.as_deref() == Some(old_address.as_str()) {
                // Only once the hold ran out (an election slower than
                // 2 × MAX + MIN = 750 ms, e.g. a split vote on a busy
                // machine) may it name the silent leader.
                assert!(
                    waited >= Duration::from_millis(750),
                    "the follower named the frozen leader after {waited:?}, without holding the call: {e}"
                );
            } else {
                let new = c.wait_leader(Duration::from_secs(10)).await;
                assert_eq!(
                    named.as_deref(),
                    Some(c.nodes[&new].grpc.as_str()),
                    "the follower names the new leader (answered after {waited:?}): {e}"
                );
            }
        }
    }
    c.resume(old);
}

/// A client given one endpoint learns the others from the membership, so it
/// keeps working when that one dies, and forgets a member that was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_learns_the_members_and_outlives_the_one_endpoint_it_was_given() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let given = c.nodes[&1].grpc.clone();
    let client = Client::with_options(
        [given.clone()],
        ClientOptions {
            request_timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(20),
            sync_endpoints: Some(Duration::from_millis(100)),
            tls: c.client_tls(),
            ..ClientOptions::default()
        },
    )
    .expect("client");
    endpoints_become(&client, c.endpoints(), "the client to learn every member").await;
    assert_eq!(
        client.endpoints()[0],
        given,
        "the given endpoint stays first"
    );

    // Kill the endpoint it was given: it still writes, through the members
    // it learned (one of which leads once node 1 is gone, if none did).
    c.kill(1);
    let m = client
        .insert("after-kill", "z")
        .await
        .expect("the client writes without the endpoint it was given");
    assert_eq!(m.record.expect("the written record").version, 1);
    c.restart(1);

    // A member that joins is learned; one that is removed is forgotten.
    let admin = c.admin();
    c.join_new(4).expect("start node 4");
    wait_for(
        Duration::from_secs(30),
        "node 4 to join and be promoted",
        || async { admin.promote(4).await.ok() },
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let gone = if leader == 3 { 2 } else { 3 };
    admin.remove_member(gone, false).await.expect("remove");
    c.stop(gone);
    let expected = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != gone)
        .map(|id| c.nodes[&id].grpc.clone())
        .collect();
    endpoints_become(
        &client,
        expected,
        "the client to learn node 4 and forget the removed member",
    )
    .await;
}

/// Waits until `client`'s endpoints are `expected`, in any order. Each try
/// writes, and a call may start a sync once the last one is old enough.
async fn endpoints_become(client: &Client, mut expected: Vec<String>, what: &str) {
    expected.sort();
    wait_for(Duration::from_secs(10), what, || async {
        client.insert("sync", "x").await.ok();
        let mut e = client.endpoints().to_vec();
        e.sort();
        (e == expected).then_some(())
    })
    .await;
}
