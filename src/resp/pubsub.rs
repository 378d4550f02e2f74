//! Watches over RESP: `SUBSCRIBE prefix [prefix ...]` and ours,
//! `WATCH.PREFIX prefix [from-revision]`.
//!
//! A channel is a key prefix: a subscriber to `call/` gets a message for
//! every change of a record under `call/` (inserted, updated, deleted,
//! completed, expired, handed off, discarded), from this node's watch
//! window, with the guarantees of the gRPC `Watch` (`api::watch`): in
//! revision order, no gaps, no duplicates. `SUBSCRIBE` starts with the next
//! change, as Redis's does; `WATCH.PREFIX` can start at an older revision
//! (the last one a watcher saw, dropping the events of it that it already
//! has, since one revision can hold several), so a subscriber that
//! reconnects misses nothing the window still holds.
//!
//! Every Redis client's pub/sub API reads the messages: RESP2 `message`
//! arrays, RESP3 `>` pushes, each `[message, prefix, payload]`. The payload
//! is one JSON object per change, the one text format every language that
//! speaks Redis parses without help:
//!
//! ```json
//! {"type":"updated","key":"call/1","revision":17,"version":3,"state":"live",
//!  "value":"answered","at_ms":1764950400000,"expires_at_ms":null}
//! ```
//!
//! A value that is not UTF-8 comes as `value_base64` instead of `value`;
//! one too large for the watcher's message comes as neither, with
//! `"value_omitted":true`, as on gRPC.
//!
//! In RESP2 a subscribed connection takes only `SUBSCRIBE`,
//! `WATCH.PREFIX`, `UNSUBSCRIBE`, `PING` and `QUIT` (Redis's rule); in
//! RESP3 every command still works beside the pushes. A subscriber that
//! falls too far behind, or reads nothing for 30 s, is cut off with an
//! error naming the revision to resume from (Redis cuts slow subscribers
//! off too: `client-output-buffer-limit pubsub`).

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use tokio_stream::StreamMap;

use super::reply::Reply;
use super::session::{Session, Shared};
use crate::api::WatchStream;
use crate::pb;

/// Prefixes one connection may watch at once.
pub const MAX_SUBSCRIPTIONS: usize = 64;

/// A connection's subscriptions, by prefix.
#[derive(Default)]
pub struct Subscriptions {
    streams: StreamMap<String, WatchStream>,
}

/// What a subscription's stream delivered.
pub enum Delivery {
    /// Messages to write.
    Messages(Vec<Reply>),
    /// The watch ended with this error: write it, close the connection.
    Ended(Reply),
}

impl Subscriptions {
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Watches `prefixes` from `from_revision` (0: the next change); one
    /// confirmation per prefix, as Redis answers `SUBSCRIBE`. A prefix
    /// refused (roles, limits, a revision the window no longer holds) gets
    /// an error in its place; the others are watched.
    pub fn subscribe(
        &mut self,
        shared: &Arc<Shared>,
        session: &Session,
        prefixes: Vec<String>,
        from_revision: u64,
    ) -> Vec<Reply> {
        let mut out = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            if !self.streams.contains_key(&prefix) && self.streams.len() >= MAX_SUBSCRIPTIONS {
                out.push(Reply::err(format!(
                    "ERR SUBSCRIBE: at most {MAX_SUBSCRIPTIONS} prefixes per connection; watch a \
                     shorter prefix, or use another connection"
                )));
                continue;
            }
            let req = pb::WatchRequest {
                prefix: prefix.clone(),
                from_revision,
                progress_interval_ms: 0,
                max_message_bytes: 0,
            };
            // A second SUBSCRIBE to a prefix changes nothing, as in Redis
            // (its watch goes on, with what it has queued); a WATCH.PREFIX
            // from a revision starts it over from there.
            if from_revision == 0 && self.streams.contains_key(&prefix) {
                out.push(confirmation("subscribe", Some(prefix), self.streams.len()));
                continue;
            }
            match shared.svc.watch_as(&session.caller, req) {
                Ok(stream) => {
                    self.streams.insert(prefix.clone(), stream);
                    out.push(confirmation("subscribe", Some(prefix), self.streams.len()));
                }
                Err(s) if s.code() == tonic::Code::PermissionDenied => {
                    out.push(Reply::err(format!("NOPERM {}", s.message())))
                }
                Err(s) => out.push(Reply::err(format!("ERR {}", s.message()))),
            }
        }
        out
    }

    /// Stops watching `prefixes` (all of them if none is named).
    pub fn unsubscribe(&mut self, prefixes: Vec<String>) -> Vec<Reply> {
        let prefixes = if prefixes.is_empty() {
            self.streams.keys().cloned().collect()
        } else {
            prefixes
        };
        if prefixes.is_empty() {
            return vec![confirmation("unsubscribe", None, 0)];
        }
        prefixes
            .into_iter()
            .map(|p| {
                self.streams.remove(&p);
                confirmation("unsubscribe", Some(p), self.streams.len())
            })
            .collect()
    }

    /// The next delivery of any subscription; pending forever while there
    /// is none (select it only when there are subscriptions).
    pub async fn next(&mut self) -> Delivery {
        match self.streams.next().await {
            Some((prefix, Ok(resp))) => Delivery::Messages(
                resp.events
                    .iter()
                    .map(|e| {
                        Reply::Push(vec![
                            Reply::text("message"),
                            Reply::text(prefix.clone()),
                            Reply::Bulk(Bytes::from(payload(e))),
                        ])
                    })
                    .collect(),
            ),
            Some((prefix, Err(status))) => Delivery::Ended(Reply::err(format!(
                "ERR watch of prefix {prefix:?} ended: {}",
                status.message()
            ))),
            None => std::future::pending().await,
        }
    }
}

/// `[subscribe|unsubscribe, prefix, count]`.
fn confirmation(kind: &'static str, prefix: Option<String>, count: usize) -> Reply {
    Reply::Push(vec![
        Reply::text(kind),
        prefix.map(Reply::text).unwrap_or(Reply::Null),
        Reply::Int(count as i64),
    ])
}

/// One change as the JSON object the module docs describe.
fn payload(e: &pb::Event) -> Vec<u8> {
    let kind = match pb::EventType::try_from(e.r#type) {
        Ok(pb::EventType::Inserted) => "inserted",
        Ok(pb::EventType::Updated) => "updated",
        Ok(pb::EventType::Deleted) => "deleted",
        Ok(pb::EventType::Completed) => "completed",
        Ok(pb::EventType::Expired) => "expired",
        Ok(pb::EventType::HandedOff) => "handed_off",
        Ok(pb::EventType::Discarded) => "discarded",
        _ => "unknown",
    };
    let r = e.record.clone().unwrap_or_default();
    let state = match pb::RecordState::try_from(r.state) {
        Ok(pb::RecordState::Live) => "live",
        Ok(pb::RecordState::Completed) => "completed",
        Ok(pb::RecordState::Expired) => "expired",
        _ => "unknown",
    };
    let mut o = serde_json::json!({
        "type": kind,
        "key": r.key,
        "revision": e.revision,
        "version": r.version,
        "state": state,
        "at_ms": e.at_ms,
        "expires_at_ms": r.expires_at_ms,
    });
    if r.value_omitted {
        o["value_omitted"] = true.into();
    } else {
        match String::from_utf8(r.value.to_vec()) {
            Ok(text) => o["value"] = text.into(),
            Err(_) => {
                o["value_base64"] = base64::engine::general_purpose::STANDARD
                    .encode(&r.value)
                    .into()
            }
        }
    }
    o.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: &[u8], omitted: bool) -> pb::Event {
        pb::Event {
            r#type: pb::EventType::Updated as i32,
            revision: 17,
            at_ms: 5,
            record: Some(pb::Record {
                key: "call/1".into(),
                value: Bytes::copy_from_slice(value),
                version: 3,
                state: pb::RecordState::Live as i32,
                value_omitted: omitted,
                ..Default::default()
            }),
        }
    }

    fn json(e: &pb::Event) -> serde_json::Value {
        serde_json::from_slice(&payload(e)).unwrap()
    }

    #[test]
    fn a_change_is_one_json_object() {
        let j = json(&event(b"answered", false));
        assert_eq!(j["type"], "updated");
        assert_eq!(j["key"], "call/1");
        assert_eq!(j["revision"], 17);
        assert_eq!(j["version"], 3);
        assert_eq!(j["state"], "live");
        assert_eq!(j["value"], "answered");
        assert!(j["expires_at_ms"].is_null());
    }

    #[test]
    fn binary_and_omitted_values_say_so() {
        let j = json(&event(&[0xff, 0x00], false));
        assert_eq!(j["value_base64"], "/wA=");
        assert!(j.get("value").is_none());
        let j = json(&event(b"", true));
        assert_eq!(j["value_omitted"], true);
        assert!(j.get("value").is_none() && j.get("value_base64").is_none());
    }
}
