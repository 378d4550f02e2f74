//! `SCAN` cursors. Redis clients treat a cursor as a number (redis-py and
//! redis-cli parse it), but a scan of inflight resumes after a key. The
//! node keeps, for each cursor it hands out, the prefix and the key to
//! resume after, shared by every connection of the port: a client with a
//! connection pool may send the next `SCAN` on another connection. The
//! table is bounded; a cursor past [`CURSOR_TTL`] or pushed out by newer
//! ones is refused, and the client starts again from 0.

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
    next: u64,
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
        // Not guessable from the previous one, never 0 (0 starts a scan).
        i.next = i.next.wrapping_add(1);
        let id = (i.next.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1).max(1);
        i.by_id.insert(id, (prefix.to_string(), after, now));
        i.order.push_back(id);
        id
    }

    /// The key to resume after, if `id` is a live cursor of `prefix`. A
    /// cursor can be used once; the page it returns hands out the next.
    pub fn take(&self, id: u64, prefix: &str) -> Option<String> {
        let mut i = self.inner.lock();
        let (p, after, at) = i.by_id.get(&id)?;
        if p != prefix || at.elapsed() > CURSOR_TTL {
            return None;
        }
        let after = after.clone();
        i.by_id.remove(&id);
        Some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_resumes_its_own_prefix_once() {
        let c = Cursors::default();
        let a = c.put("call/", "call/7".into());
        let b = c.put("sms/", "sms/1".into());
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert_eq!(c.take(a, "sms/"), None, "another prefix");
        assert_eq!(c.take(a, "call/"), Some("call/7".into()));
        assert_eq!(c.take(a, "call/"), None, "used");
        assert_eq!(c.take(b, "sms/"), Some("sms/1".into()));
        assert_eq!(c.take(12345, ""), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let c = Cursors::default();
        let first = c.put("", "a".into());
        for _ in 0..MAX_CURSORS {
            c.put("", "b".into());
        }
        assert_eq!(c.take(first, ""), None);
        assert!(c.inner.lock().by_id.len() <= MAX_CURSORS);
    }
}
