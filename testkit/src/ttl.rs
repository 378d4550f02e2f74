//! TTL helpers shared by the clock tests.

use std::time::Duration;

use inflight::client::{Client, Consistency};
use inflight::pb;

use crate::wait_for;

/// An insert of `key` with a TTL (`None`: none).
pub fn insert(key: &str, ttl_ms: Option<u64>) -> pb::InsertRequest {
    pb::InsertRequest {
        key: key.into(),
        value: b"ringing".to_vec(),
        ttl_ms,
        ..Default::default()
    }
}

/// The state of the record a get found.
pub fn state_of(r: &pb::GetResponse) -> pb::RecordState {
    pb::RecordState::try_from(r.record.as_ref().expect("a record").state).expect("a known state")
}

/// The leader's expiry still runs on its stamps: a fresh 300 ms TTL
/// (`call/short`) expires within 10 s, and `long`, a record with a TTL far
/// from due, stays LIVE. Needs a sink that refuses, so EXPIRED stays visible.
pub async fn expiry_runs_and_spares(client: &Client, long: &str) {
    client
        .send_insert(insert("call/short", Some(300)))
        .await
        .expect("insert call/short");
    wait_for(Duration::from_secs(10), "call/short to expire", || async {
        let g = client
            .get("call/short", Consistency::Linearizable)
            .await
            .ok()?;
        (state_of(&g) == pb::RecordState::Expired).then_some(())
    })
    .await;
    let g = client
        .get(long, Consistency::Linearizable)
        .await
        .expect("read the long TTL");
    assert_eq!(state_of(&g), pb::RecordState::Live, "{long} expired early");
}
