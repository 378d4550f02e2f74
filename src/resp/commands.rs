//! Every command the RESP port runs, in one table: the dispatch reads from
//! it which commands join a pipeline's wave (`conn.rs`) and which use up a
//! `REQID`, and `COMMAND` answers from it, so the lists cannot drift apart.
//! (`WATCH` is not here: it is refused with the reason, see `session.rs`.)

/// One command.
pub(super) struct Spec {
    /// Upper case, as dispatched.
    pub name: &'static str,
    /// Redis's arity: the argument count with the name, negative for "at least".
    pub arity: i64,
    /// The one flag `COMMAND` reports.
    pub flag: &'static str,
    /// Positions of the first and last key (0: none; -1: the last argument).
    pub first_key: i64,
    pub last_key: i64,
    /// A record command: runs in a wave with the pipeline's other record
    /// commands (see `conn.rs`), not between waves.
    pub record: bool,
    /// Writes, or ends a `MULTI` block: uses up the `REQID` before it,
    /// whether it succeeds or not.
    pub takes_request_id: bool,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flag: &'static str,
    keys: (i64, i64),
    record: bool,
    takes_request_id: bool,
) -> Spec {
    Spec {
        name,
        arity,
        flag,
        first_key: keys.0,
        last_key: keys.1,
        record,
        takes_request_id,
    }
}

const ONE: (i64, i64) = (1, 1);
const ALL: (i64, i64) = (1, -1);
const NONE: (i64, i64) = (0, 0);

pub(super) const COMMANDS: &[Spec] = &[
    // Record commands.
    spec("GET", 2, "readonly", ONE, true, false),
    spec("MGET", -2, "readonly", ALL, true, false),
    spec("EXISTS", -2, "readonly", ALL, true, false),
    spec("SET", -3, "write", ONE, true, true),
    spec("DEL", -2, "write", ALL, true, true),
    spec("EXPIRE", 3, "write", ONE, true, true),
    spec("PEXPIRE", 3, "write", ONE, true, true),
    spec("PERSIST", 2, "write", ONE, true, true),
    spec("TTL", 2, "readonly", ONE, true, false),
    spec("PTTL", 2, "readonly", ONE, true, false),
    spec("SCAN", -2, "readonly", NONE, true, false),
    spec("IF.SET", 4, "write", ONE, true, true),
    spec("IF.DEL", 3, "write", ONE, true, true),
    spec("COMPLETE", -2, "write", ONE, true, true),
    spec("RECORD", 2, "readonly", ONE, true, false),
    spec("EXEC", 1, "write", NONE, true, true),
    // Connection commands.
    spec("CONSISTENCY", -2, "fast", NONE, false, false),
    spec("REQID", 2, "fast", NONE, false, false),
    spec("MULTI", 1, "fast", NONE, false, false),
    spec("DISCARD", 1, "fast", NONE, false, true),
    spec("PING", -1, "fast", NONE, false, false),
    spec("ECHO", 2, "fast", NONE, false, false),
    spec("HELLO", -1, "fast", NONE, false, false),
    spec("CLIENT", -2, "fast", NONE, false, false),
    spec("SELECT", 2, "fast", NONE, false, false),
    spec("COMMAND", -1, "loading", NONE, false, false),
    spec("INFO", -1, "loading", NONE, false, false),
    spec("DBSIZE", 1, "readonly", NONE, false, false),
    spec("QUIT", 1, "fast", NONE, false, false),
    spec("SUBSCRIBE", -2, "pubsub", NONE, false, false),
    spec("UNSUBSCRIBE", -1, "pubsub", NONE, false, false),
    spec("WATCH.PREFIX", -2, "pubsub", NONE, false, false),
];

/// The command named `name`, in any case.
pub(super) fn find(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}
