//! `SCAN` cursors. Redis clients treat a cursor as a number (redis-py and
//! redis-cli parse it), but a scan of inflight resumes after a key. The
//! node keeps, for each cursor it hands out, the prefix and the key to
//! resume after, shared by every connection of the port: a client with a
//! connection pool may send the next `SCAN` on another connection. The
//! table is bounded; a cursor past [`CURSOR_TTL`] or pushed out by newer
//! ones is refused, and the client starts again from 0. A cursor stays
//! valid until then, so a `SCAN` that failed (an election, a timeout) can be
//! sent again with the same cursor. Cursors are random, so one client
//! cannot guess another's.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Cursors kept at most; the oldest goes first.
pub const MAX_CURSORS: usize = 100_000;
/// A cursor not used again within this is forgotten.
pub const CURSOR_TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Cursors {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, (String, String, Instant)>,
    /// Ids in the order they were handed out.
    order: VecDeque<u64>,
}

impl Cursors {
    /// A new cursor resuming after `after` under `prefix`.
    pub fn put(&self, prefix: &str, after: String) -> u64 {
        let mut i = self.inner.lock();
        let now = Instant::now();
        while let Some(&old) = i.order.front() {
            let stale = i
                .by_id
                .get(&old)
                .is_none_or(|(_, _, at)| now.duration_since(*at) > CURSOR_TTL);
            if !stale && i.order.len() < MAX_CURSORS {
                break;
            }
            i.order.pop_front();
            i.by_id.remove(&old);
        }
        // Random, never 0 (0 starts a scan), below 2^63 (some clients
        // parse cursors as signed), not one in use.
        let id = loop {
            let id = rand::random::<u64>() >> 1;
            if id != 0 && !i.by_id.contains_key(&id) {
                break id;
            }
        };
        i.by_id.insert(id, (prefix.to_string(), after, now));
        i.order.push_back(id);
        id
    }

    /// The key to resume after, if `id` is a live cursor of `prefix`.
    pub fn resume(&self, id: u64, prefix: &str) -> Option<String> {
        let i = self.inner.lock();
        let (p, after, at) = i.by_id.get(&id)?;
        (p == prefix && at.elapsed() <= CURSOR_TTL).then(|| after.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_resumes_its_own_prefix_and_can_be_sent_again() {
        let c = Cursors::default();
        let a = c.put("call/", "call/7".into());
        let b = c.put("sms/", "sms/1".into());
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert!(a < 1 << 63);
        assert_eq!(c.resume(a, "sms/"), None, "another prefix");
        assert_eq!(c.resume(a, "call/"), Some("call/7".into()));
        assert_eq!(c.resume(a, "call/"), Some("call/7".into()), "a retry");
        assert_eq!(c.resume(b, "sms/"), Some("sms/1".into()));
        assert_eq!(c.resume(12345, ""), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let c = Cursors::default();
        let first = c.put("", "a".into());
        for _ in 0..MAX_CURSORS {
            c.put("", "b".into());
        }
        assert_eq!(c.resume(first, ""), None);
        assert!(c.inner.lock().by_id.len() <= MAX_CURSORS);
    }
}
