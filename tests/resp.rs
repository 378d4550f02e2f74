//! The RESP port (`--resp-listen`) on a real 3-node cluster: every command
//! through the `redis` crate in RESP2 and RESP3, the error cases on a raw
//! socket (the connection stays usable, or closes for bytes that are not
//! RESP), pipelining through the proposal batching, followers, redis-cli,
//! and redis-py.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use testkit::cluster::refusing_sink;
use testkit::http::metric;
use testkit::resp::{self, RespConn};
use testkit::{Addresses, Cluster, ClusterOptions};

fn resp_addr(c: &Cluster, id: u64) -> String {
    c.nodes[&id]
        .resp
        .clone()
        .expect("test clusters open a RESP port")
}

async fn connect(addr: &str, resp3: bool) -> redis::aio::MultiplexedConnection {
    let proto = if resp3 { "?protocol=resp3" } else { "" };
    redis::Client::open(format!("redis://{addr}/{proto}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cmd(
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<Value> {
    let mut k = redis::cmd(args[0]);
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query_async(c).await
}

fn code(e: &redis::RedisError) -> String {
    e.code().unwrap_or("").to_string()
}

async fn ok(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> Value {
    cmd(c, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

/// The revision of the last change of `key`, from `RECORD` (RESP2).
async fn mod_revision(c: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    match ok(c, &["RECORD", key]).await {
        Value::Array(a) => a
            .chunks(2)
            .find(|p| p[0] == bulk("mod_revision"))
            .map(|p| int(&p[1]))
            .unwrap(),
        other => panic!("{other:?}"),
    }
}

/// Sends `SET pipe/<i> v NX` for i in 0..n in one pipeline on `raw` and
/// checks that every one was answered `OK`.
fn pipelined_inserts(raw: &mut Raw, n: usize) {
    let mut p = Vec::new();
    for i in 0..n {
        p.extend(resp::encode(&[
            b"SET",
            format!("pipe/{i}").as_bytes(),
            b"v",
            b"NX",
        ]));
    }
    p.extend(resp::encode(&[b"ECHO", b"end"]));
    raw.send(&p);
    let got = raw.read_until("$3\r\nend\r\n");
    assert_eq!(got.matches("+OK\r\n").count(), n, "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_answers_as_redis_would_in_resp2_and_resp3() {
    // Completed records stay in memory (immutable) instead of leaving it.
    let c = Cluster::start(ClusterOptions {
        sink: Some(refusing_sink()),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let addr = resp_addr(&c, leader);
    for resp3 in [false, true] {
        let p = if resp3 { "r3/" } else { "r2/" };
        let k = |s: &str| format!("{p}{s}");
        let mut r = connect(&addr, resp3).await;
        let ok_reply = Value::Okay;

        assert_eq!(
            ok(&mut r, &["PING"]).await,
            Value::SimpleString("PONG".into())
        );
        assert_eq!(ok(&mut r, &["ECHO", "hi"]).await, bulk("hi"));
        // COMMAND: an entry per command, COUNT agrees, INFO looks names up
        // in any case and answers nil for one it does not know.
        let Value::Array(all) = ok(&mut r, &["COMMAND"]).await else {
            panic!("COMMAND is not an array")
        };
        assert!(all.len() >= 30, "{} commands listed", all.len());
        assert_eq!(
            int(&ok(&mut r, &["COMMAND", "COUNT"]).await),
            all.len() as i64
        );
        let entry = |name: &str, arity: i64, flag: &str, key: i64| {
            Value::Array(vec![
                bulk(name),
                Value::Int(arity),
                Value::Array(vec![Value::SimpleString(flag.into())]),
                Value::Int(key),
                Value::Int(key),
                Value::Int(key),
            ])
        };
        assert_eq!(
            ok(
                &mut r,
                &["COMMAND", "INFO", "Get", "if.set", "ping", "nosuch"]
            )
            .await,
            Value::Array(vec![
                entry("get", 2, "readonly", 1),
                entry("if.set", 4, "write", 1),
                entry("ping", -1, "fast", 0),
                Value::Nil,
            ])
        );
        // SET: upsert, NX (insert), XX (update), GET.
        assert_eq!(ok(&mut r, &["SET", &k("a"), "1"]).await, ok_reply);
        assert_eq!(ok(&mut r, &["GET", &k("a")]).await, bulk("1"));
        assert_eq!(
            ok(&mut r, &["SET", &k("a"), "2"]).await,
            ok_reply,
            "upsert of an existing key"
        );
        assert_eq!(ok(&mut r, &["SET", &k("a"), "x", "NX"]).await, Value::Nil);
        assert_eq!(
            ok(&mut r, &["SET", &k("none"), "x", "XX"]).await,
            Value::Nil
        );
        assert_eq!(ok(&mut r, &["GET", &k("none")]).await, Value::Nil);
        assert_eq!(
            ok(&mut r, &["SET", &k("a"), "3", "XX", "GET"]).await,
            bulk("2")
        );
        assert_eq!(
            ok(&mut r, &["SET", &k("b"), "9", "NX", "GET"]).await,
            Value::Nil
        );
        assert_eq!(
            ok(&mut r, &["MGET", &k("a"), &k("none"), &k("b")]).await,
            Value::Array(vec![bulk("3"), Value::Nil, bulk("9")])
        );
        assert_eq!(
            int(&ok(&mut r, &["EXISTS", &k("a"), &k("none"), &k("b")]).await),
            2
        );
        // TTLs.
        assert_eq!(int(&ok(&mut r, &["TTL", &k("a")]).await), -1);
        assert_eq!(int(&ok(&mut r, &["TTL", &k("none")]).await), -2);
        assert_eq!(
            ok(&mut r, &["SET", &k("t"), "v", "EX", "100"]).await,
            ok_reply
        );
        let ttl = int(&ok(&mut r, &["TTL", &k("t")]).await);
        assert!((95..=100).contains(&ttl), "{ttl}");
        let pttl = int(&ok(&mut r, &["PTTL", &k("t")]).await);
        assert!((95_000..=100_000).contains(&pttl), "{pttl}");
        assert_eq!(int(&ok(&mut r, &["PERSIST", &k("t")]).await), 1);
        assert_eq!(int(&ok(&mut r, &["PERSIST", &k("t")]).await), 0);
        assert_eq!(int(&ok(&mut r, &["TTL", &k("t")]).await), -1);
        assert_eq!(int(&ok(&mut r, &["PEXPIRE", &k("t"), "50000"]).await), 1);
        let ttl = int(&ok(&mut r, &["TTL", &k("t")]).await);
        assert!((45..=50).contains(&ttl), "{ttl}");
        assert_eq!(
            ok(&mut r, &["SET", &k("t"), "w", "KEEPTTL"]).await,
            ok_reply
        );
        assert!(
            int(&ok(&mut r, &["TTL", &k("t")]).await) > 0,
            "KEEPTTL kept it"
        );
        assert_eq!(ok(&mut r, &["SET", &k("t"), "w"]).await, ok_reply);
        assert_eq!(
            int(&ok(&mut r, &["TTL", &k("t")]).await),
            -1,
            "a plain SET clears the TTL"
        );
        assert_eq!(int(&ok(&mut r, &["EXPIRE", &k("none"), "10"]).await), 0);
        assert_eq!(int(&ok(&mut r, &["EXPIRE", &k("t"), "0"]).await), 1);
        assert_eq!(
            ok(&mut r, &["GET", &k("t")]).await,
            Value::Nil,
            "EXPIRE 0 deletes"
        );
        // DEL counts what it deleted.
        assert_eq!(int(&ok(&mut r, &["DEL", &k("b"), &k("none")]).await), 1);
        // Our own: versions, completion, the whole record.
        assert_eq!(ok(&mut r, &["SET", &k("c"), "v", "NX"]).await, ok_reply);
        assert_eq!(int(&ok(&mut r, &["IF.SET", &k("c"), "1", "w"]).await), 2);
        assert_eq!(ok(&mut r, &["IF.SET", &k("c"), "1", "x"]).await, Value::Nil);
        assert_eq!(int(&ok(&mut r, &["IF.DEL", &k("c"), "1"]).await), 0);
        let record = ok(&mut r, &["RECORD", &k("c")]).await;
        let fields: Vec<(Value, Value)> = match record {
            Value::Map(m) => m,
            Value::Array(a) => a.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect(),
            other => panic!("RECORD answered {other:?}"),
        };
        assert!(
            fields.contains(&(bulk("version"), Value::Int(2))),
            "{fields:?}"
        );
        assert!(
            fields.contains(&(bulk("state"), bulk("live"))),
            "{fields:?}"
        );
        assert!(fields.contains(&(bulk("value"), bulk("w"))), "{fields:?}");
        assert_eq!(int(&ok(&mut r, &["COMPLETE", &k("c"), "done"]).await), 3);
        let e = cmd(&mut r, &["SET", &k("c"), "again"]).await.unwrap_err();
        assert_eq!(code(&e), "IMMUTABLE", "{e}");
        assert_eq!(ok(&mut r, &["COMPLETE", &k("none")]).await, Value::Nil);
        // MULTI/EXEC is one atomic batch.
        assert_eq!(ok(&mut r, &["MULTI"]).await, ok_reply);
        assert_eq!(
            ok(&mut r, &["SET", &k("m1"), "1", "NX"]).await,
            Value::SimpleString("QUEUED".into())
        );
        assert_eq!(
            ok(&mut r, &["SET", &k("m2"), "2", "NX", "EX", "60"]).await,
            Value::SimpleString("QUEUED".into())
        );
        assert_eq!(
            ok(&mut r, &["IF.SET", &k("a"), "3", "4"]).await,
            Value::SimpleString("QUEUED".into())
        );
        assert_eq!(
            ok(&mut r, &["EXEC"]).await,
            Value::Array(vec![Value::Okay, Value::Okay, Value::Int(4)])
        );
        assert_eq!(ok(&mut r, &["MULTI"]).await, ok_reply);
        ok(&mut r, &["SET", &k("m3"), "3", "NX"]).await;
        ok(&mut r, &["SET", &k("m1"), "again", "NX"]).await;
        let e = cmd(&mut r, &["EXEC"]).await.unwrap_err();
        assert_eq!(code(&e), "EXECFAILED", "{e}");
        assert!(e.to_string().contains("ops[1]"), "{e}");
        assert_eq!(
            ok(&mut r, &["GET", &k("m3")]).await,
            Value::Nil,
            "nothing applied"
        );
        assert_eq!(ok(&mut r, &["MULTI"]).await, ok_reply);
        assert!(
            cmd(&mut r, &["GET", &k("a")]).await.is_err(),
            "reads are not queued"
        );
        let e = cmd(&mut r, &["EXEC"]).await.unwrap_err();
        assert_eq!(code(&e), "EXECABORT", "{e}");
        assert!(cmd(&mut r, &["WATCH", &k("a")])
            .await
            .unwrap_err()
            .to_string()
            .contains("IF.SET"));
        // Request ids: a retried SET NX with the same id gets the first answer.
        ok(&mut r, &["REQID", &format!("{p}req-1")]).await;
        assert_eq!(ok(&mut r, &["SET", &k("idem"), "v", "NX"]).await, ok_reply);
        ok(&mut r, &["REQID", &format!("{p}req-1")]).await;
        assert_eq!(
            ok(&mut r, &["SET", &k("idem"), "v", "NX"]).await,
            ok_reply,
            "the retry is recognised"
        );
        ok(&mut r, &["REQID", &format!("{p}req-2")]).await;
        assert!(cmd(&mut r, &["SET", &k("idem"), "v"])
            .await
            .unwrap_err()
            .to_string()
            .contains("REQID"));
        // A command that fails uses up the REQID before it: the next
        // write does not carry it, and the id is still free afterwards.
        ok(&mut r, &["REQID", &format!("{p}req-3")]).await;
        assert!(cmd(&mut r, &["IF.SET", &k("a"), "not-a-version", "x"])
            .await
            .is_err());
        assert_eq!(ok(&mut r, &["SET", &k("n1"), "v", "NX"]).await, ok_reply);
        ok(&mut r, &["REQID", &format!("{p}req-3")]).await;
        assert_eq!(
            ok(&mut r, &["SET", &k("n2"), "v", "NX"]).await,
            ok_reply,
            "req-3 was not used by n1"
        );
        // An EXPIRED record waiting for hand-off takes no write: a plain SET
        // says so at once (no retries against a record that cannot change).
        assert_eq!(
            ok(&mut r, &["SET", &k("x"), "v", "PX", "100"]).await,
            ok_reply
        );
        let mut expired = false;
        for _ in 0..200 {
            if int(&ok(&mut r, &["TTL", &k("x")]).await) == -2 {
                expired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(expired, "the 100 ms TTL did not expire within 10 s");
        let e = cmd(&mut r, &["SET", &k("x"), "again"]).await.unwrap_err();
        assert_eq!(code(&e), "IMMUTABLE", "{e}");
        assert!(e.to_string().contains("EXPIRED"), "{e}");
        assert_eq!(
            int(&ok(&mut r, &["DEL", &k("x")]).await),
            0,
            "not deleted: waits for hand-off"
        );
        // TTL rounds to the nearest second, as Redis does.
        ok(&mut r, &["SET", &k("round"), "v", "PX", "1400"]).await;
        assert_eq!(int(&ok(&mut r, &["TTL", &k("round")]).await), 1);
        // Connection commands.
        assert_eq!(ok(&mut r, &["SELECT", "0"]).await, ok_reply);
        assert!(cmd(&mut r, &["SELECT", "1"]).await.is_err());
        assert_eq!(
            ok(&mut r, &["CLIENT", "SETNAME", "router-7"]).await,
            ok_reply
        );
        assert_eq!(ok(&mut r, &["CLIENT", "GETNAME"]).await, bulk("router-7"));
        assert!(int(&ok(&mut r, &["CLIENT", "ID"]).await) > 0);
        // a, c (completed, kept by the refusing sink), m1, m2, idem.
        assert!(int(&ok(&mut r, &["DBSIZE"]).await) >= 5);
        assert_eq!(ok(&mut r, &["CONSISTENCY", "stale", "500"]).await, ok_reply);
        assert_eq!(ok(&mut r, &["GET", &k("a")]).await, bulk("4"));
        assert_eq!(ok(&mut r, &["CONSISTENCY", "lease"]).await, ok_reply);
        assert_eq!(ok(&mut r, &["GET", &k("a")]).await, bulk("4"));
        assert!(cmd(&mut r, &["CONSISTENCY", "eventual"]).await.is_err());
        let e = cmd(&mut r, &["NOSUCH", "x"]).await.unwrap_err();
        assert!(e.to_string().contains("unknown command 'NOSUCH'"), "{e}");
        let e = cmd(&mut r, &["GET"]).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("wrong number of arguments for 'get'"),
            "{e}"
        );
        let hello = ok(&mut r, &["HELLO", if resp3 { "3" } else { "2" }]).await;
        let proto = if resp3 { 3 } else { 2 };
        let has_proto = match &hello {
            Value::Map(m) => m.contains(&(bulk("proto"), Value::Int(proto))),
            Value::Array(a) => a
                .windows(2)
                .any(|w| w[0] == bulk("proto") && w[1] == Value::Int(proto)),
            _ => false,
        };
        assert!(has_proto, "{hello:?}");
    }
    // SCAN pages with numeric cursors through every key of a prefix.
    let mut r = connect(&addr, false).await;
    for i in 0..25 {
        ok(&mut r, &["SET", &format!("scan/{i:02}"), "v", "NX"]).await;
    }
    ok(&mut r, &["SET", "other", "v"]).await;
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = ok(&mut r, &["SCAN", &cursor, "MATCH", "scan/*", "COUNT", "10"]).await;
        let Value::Array(parts) = page else {
            panic!("{page:?}")
        };
        let (Value::BulkString(next), Value::Array(keys)) = (&parts[0], &parts[1]) else {
            panic!("{parts:?}")
        };
        for key in keys {
            let Value::BulkString(key) = key else {
                panic!("{key:?}")
            };
            seen.push(String::from_utf8(key.clone()).unwrap());
        }
        pages += 1;
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (0..25).map(|i| format!("scan/{i:02}")).collect::<Vec<_>>()
    );
    let e = cmd(&mut r, &["SCAN", "0", "MATCH", "scan/?"])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("only prefix patterns"), "{e}");
    let e = cmd(&mut r, &["SCAN", "12345"]).await.unwrap_err();
    assert!(e.to_string().contains("invalid cursor"), "{e}");
}

/// One raw connection: what it sends, what it reads back.
struct Raw(std::net::TcpStream);

impl Raw {
    fn open(addr: &str) -> Raw {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw(s)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// Reads until what came in ends with `end`.
    fn read_until(&mut self, end: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).ends_with(end) {
            let n = self.0.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    /// Reads to the end of the stream (the server closed it).
    fn read_to_close(&mut self) -> String {
        let mut got = Vec::new();
        self.0.read_to_end(&mut got).unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_an_error_and_the_connection_stays_usable() {
    let c = Cluster::start(ClusterOptions {
        extra_args: vec!["--max-value-bytes".into(), "1024".into()],
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let addr = resp_addr(&c, leader);
    let mut raw = Raw::open(&addr);
    // A value over --max-value-bytes: refused, the rest read and dropped.
    let big = vec![b'x'; 5000];
    raw.send(&resp::encode(&[b"SET", b"k", &big]));
    raw.send(&resp::encode(&[b"PING"]));
    let got = raw.read_until("+PONG\r\n");
    assert!(
        got.starts_with(
            "-ERR argument 3 is a bulk string of 5000 bytes, more than the limit of 1024"
        ),
        "{got}"
    );
    // Too many arguments.
    let many: Vec<&[u8]> = std::iter::once(&b"MGET"[..])
        .chain(std::iter::repeat_n(&b"k"[..], 5000))
        .collect();
    raw.send(&resp::encode(&many));
    raw.send(b"PING\r\n");
    let got = raw.read_until("+PONG\r\n");
    assert!(got.starts_with("-ERR too many arguments: 5001"), "{got}");
    // A key that is not UTF-8, a key over the limit, an unknown command.
    raw.send(&resp::encode(&[b"GET", b"\xff\xfe"]));
    raw.send(&resp::encode(&[b"GET", &[b'k'; 600]]));
    raw.send(&resp::encode(&[b"FLUSHALL"]));
    raw.send(b"PING\r\n");
    let got = raw.read_until("+PONG\r\n");
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert!(lines[0].starts_with("-ERR keys must be UTF-8"), "{got}");
    assert!(
        lines[1].starts_with("-ERR key:") && lines[1].contains("512"),
        "{got}"
    );
    assert!(
        lines[2].starts_with("-ERR unknown command 'FLUSHALL'"),
        "{got}"
    );
    // Too many words on an inline line; a HELLO refused whole leaves the
    // protocol as it was (RESP2: nil is $-1, not _).
    let mut line = b"MGET".to_vec();
    for _ in 0..5000 {
        line.extend_from_slice(b" k");
    }
    line.extend_from_slice(b"\r\n");
    raw.send(&line);
    raw.send(&resp::encode(&[b"HELLO", b"3", b"AUTH", b"default", b"pw"]));
    raw.send(&resp::encode(&[b"GET", b"missing"]));
    raw.send(b"PING\r\n");
    let got = raw.read_until("+PONG\r\n");
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert!(
        lines[0].starts_with("-ERR too many arguments: 5001"),
        "{got}"
    );
    assert!(lines[1].starts_with("-ERR AUTH"), "{got}");
    assert_eq!(lines[2], "$-1", "{got}");
    // A MULTI block is held to the batch limits while it is queued.
    let mut p = resp::encode(&[b"MULTI"]);
    for i in 0..1001 {
        p.extend(resp::encode(&[
            b"SET",
            format!("m/{i}").as_bytes(),
            b"v",
            b"NX",
        ]));
    }
    p.extend(resp::encode(&[b"EXEC"]));
    p.extend(resp::encode(&[b"EXISTS", b"m/0"]));
    raw.send(&p);
    let got = raw.read_until(":0\r\n");
    assert_eq!(got.matches("+QUEUED\r\n").count(), 1000, "{got}");
    assert!(
        got.contains("-ERR MULTI: more than 1000 commands in one block"),
        "{got}"
    );
    assert!(got.contains("-EXECABORT"), "{got}");
    // Bytes that are not RESP: an error, then the connection closes.
    raw.send(b"*1\r\n:5\r\n");
    let got = raw.read_to_close();
    assert!(
        got.starts_with("-ERR Protocol error: expected '$'"),
        "{got}"
    );
    // Other connections are not affected.
    let mut r = connect(&addr, false).await;
    assert_eq!(
        ok(&mut r, &["PING"]).await,
        Value::SimpleString("PONG".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_answers_in_order_and_its_writes_share_proposals() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let addr = resp_addr(&c, leader);
    let mut raw = Raw::open(&addr);
    // Same key, one after the other: each command sees the one before.
    let mut p = Vec::new();
    for args in [
        &[&b"SET"[..], b"seq", b"1"][..],
        &[b"GET", b"seq"],
        &[b"SET", b"seq", b"2", b"XX"],
        &[b"GET", b"seq"],
        &[b"DEL", b"seq"],
        &[b"GET", b"seq"],
        &[b"ECHO", b"end"],
    ] {
        p.extend(resp::encode(args));
    }
    raw.send(&p);
    let got = raw.read_until("$3\r\nend\r\n");
    assert_eq!(
        got,
        "+OK\r\n$1\r\n1\r\n+OK\r\n$1\r\n2\r\n:1\r\n$-1\r\n$3\r\nend\r\n"
    );
    // Writes apply in the order sent, across keys too: the upsert of
    // `data` (a read, then a write) before the insert of `flag`.
    let mut p = resp::encode(&[b"SET", b"data", b"x"]);
    p.extend(resp::encode(&[b"SET", b"flag", b"1", b"NX"]));
    raw.send(&p);
    assert_eq!(raw.read_until("+OK\r\n+OK\r\n"), "+OK\r\n+OK\r\n");
    let mut r = connect(&addr, false).await;
    let data = mod_revision(&mut r, "data").await;
    let flag = mod_revision(&mut r, "flag").await;
    assert!(data < flag, "data at {data}, flag at {flag}");

    // 200 inserts of distinct keys in one pipeline: far fewer proposals.
    let http = &c.nodes[&leader].http;
    let before = metric(http, "inflight_proposal_batch_size_count").await;
    pipelined_inserts(&mut raw, 200);
    let proposals = metric(http, "inflight_proposal_batch_size_count").await - before;
    assert!(
        proposals <= 20.0,
        "200 pipelined writes took {proposals} proposals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_answers_reads_and_names_the_leader() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let mut l = connect(&resp_addr(&c, leader), false).await;
    ok(&mut l, &["SET", "shared", "v"]).await;
    for id in c.members() {
        let mut r = connect(&resp_addr(&c, id), true).await;
        // LINEARIZABLE reads are served by followers too (follower ReadIndex).
        assert_eq!(ok(&mut r, &["GET", "shared"]).await, bulk("v"), "node {id}");
        let info = ok(&mut r, &["INFO", "replication"]).await;
        let text = match info {
            Value::BulkString(b) => String::from_utf8(b).unwrap(),
            Value::VerbatimString { text, .. } => text,
            other => panic!("{other:?}"),
        };
        assert!(
            text.contains(&format!("inflight_leader_id:{leader}\r\n")),
            "{text}"
        );
        let role = if id == leader {
            "role:master"
        } else {
            "role:slave"
        };
        assert!(text.contains(role), "{text}");
        if id != leader {
            // Only the leader holds a lease: a LEASE read names it.
            ok(&mut r, &["CONSISTENCY", "lease"]).await;
            let e = cmd(&mut r, &["GET", "shared"]).await.unwrap_err();
            assert_eq!(code(&e), "READONLY", "{e}");
            assert!(
                e.to_string().contains(&c.nodes[&leader].grpc),
                "names the leader: {e}"
            );
        }
    }
}

/// A write sent to a follower's RESP port is forwarded to the leader and
/// answered as the leader answers it: every kind of write, a refusal, a
/// request id's replay, a MULTI block, and a pipeline that still shares
/// proposals on the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_forwards_writes_to_the_leader() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = c.members().into_iter().find(|id| *id != leader).unwrap();
    let mut f = connect(&resp_addr(&c, follower), false).await;
    let mut l = connect(&resp_addr(&c, leader), false).await;
    let forwarded =
        || async { metric(&c.nodes[&follower].http, "inflight_writes_forwarded_total").await };
    let before = forwarded().await;

    // Each kind of write, seen on the leader.
    assert_eq!(
        ok(&mut f, &["SET", "call/1", "ringing", "NX"]).await,
        Value::Okay
    );
    assert_eq!(ok(&mut l, &["GET", "call/1"]).await, bulk("ringing"));
    assert_eq!(
        ok(&mut f, &["SET", "call/1", "answered"]).await,
        Value::Okay
    );
    assert_eq!(
        ok(&mut f, &["IF.SET", "call/1", "2", "held"]).await,
        Value::Int(3)
    );
    assert_eq!(ok(&mut l, &["GET", "call/1"]).await, bulk("held"));
    // The leader's refusal, as the leader gives it.
    assert_eq!(
        ok(&mut f, &["SET", "call/1", "again", "NX"]).await,
        Value::Nil
    );
    assert_eq!(
        ok(&mut f, &["IF.SET", "call/1", "1", "stale"]).await,
        Value::Nil,
        "a version mismatch on the leader"
    );
    assert_eq!(
        ok(&mut f, &["PEXPIRE", "call/1", "600000"]).await,
        Value::Int(1)
    );
    assert!(int(&ok(&mut l, &["PTTL", "call/1"]).await) > 500_000);
    assert_eq!(ok(&mut f, &["COMPLETE", "call/1"]).await, Value::Int(5));
    let e = cmd(&mut f, &["SET", "call/1", "late", "XX"])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "IMMUTABLE", "{e}");

    // A request id travels with the write: its retry is answered from the
    // leader's id table, and applies once.
    ok(&mut f, &["REQID", "sms-7"]).await;
    assert_eq!(
        ok(&mut f, &["SET", "sms/7", "queued", "NX"]).await,
        Value::Okay
    );
    ok(&mut l, &["SET", "sms/7", "sent", "XX"]).await;
    ok(&mut f, &["REQID", "sms-7"]).await;
    assert_eq!(
        ok(&mut f, &["SET", "sms/7", "queued", "NX"]).await,
        Value::Okay
    );
    assert_eq!(
        ok(&mut l, &["GET", "sms/7"]).await,
        bulk("sent"),
        "the retry applied again"
    );

    // A MULTI block is one atomic batch on the leader, refused whole.
    ok(&mut f, &["MULTI"]).await;
    ok(&mut f, &["SET", "sms/8", "a", "NX"]).await;
    ok(&mut f, &["SET", "sms/7", "b", "NX"]).await;
    let e = cmd(&mut f, &["EXEC"]).await.unwrap_err();
    assert_eq!(code(&e), "EXECFAILED", "{e}");
    assert_eq!(ok(&mut l, &["EXISTS", "sms/8"]).await, Value::Int(0));
    assert_eq!(ok(&mut f, &["DEL", "sms/7"]).await, Value::Int(1));
    assert_eq!(ok(&mut l, &["EXISTS", "sms/7"]).await, Value::Int(0));
    assert!(
        forwarded().await - before >= 10.0,
        "the writes went through Raft.Forward"
    );

    // 200 pipelined inserts on the follower still meet in few requests to
    // the leader and few proposals, and apply in the order sent.
    let http = &c.nodes[&leader].http;
    let proposals_before = metric(http, "inflight_proposal_batch_size_count").await;
    let follower_http = &c.nodes[&follower].http;
    let requests_before = metric(follower_http, "inflight_forward_batch_size_count").await;
    let mut raw = Raw::open(&resp_addr(&c, follower));
    pipelined_inserts(&mut raw, 200);
    let proposals = metric(http, "inflight_proposal_batch_size_count").await - proposals_before;
    assert!(
        proposals <= 40.0,
        "200 forwarded writes took {proposals} proposals"
    );
    let requests =
        metric(follower_http, "inflight_forward_batch_size_count").await - requests_before;
    assert!(
        requests <= 40.0,
        "200 forwarded writes took {requests} requests to the leader"
    );
    let mut last = 0;
    for i in 0..200 {
        let revision = mod_revision(&mut l, &format!("pipe/{i}")).await;
        assert!(
            revision > last,
            "pipe/{i} at {revision}, after {last}: out of order"
        );
        last = revision;
    }
}

/// A follower cut off from the leader answers a write within the forward
/// timeout, never hangs, and nothing is applied; once healed it forwards
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_answers_a_write_and_applies_nothing() {
    let c = Cluster::start(ClusterOptions {
        addresses: Addresses::DistinctIps,
        ..ClusterOptions::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = c.members().into_iter().find(|id| *id != leader).unwrap();
    let mut f = connect(&resp_addr(&c, follower), false).await;
    ok(&mut f, &["SET", "before", "1", "NX"]).await;
    let fw = c.isolate(follower);
    let started = std::time::Instant::now();
    let e = cmd(&mut f, &["SET", "during", "1", "NX"])
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        ["UNKNOWN", "READONLY", "TRYAGAIN"].contains(&code(&e).as_str()),
        "{e}"
    );
    assert!(
        took < inflight::api::FORWARD_TIMEOUT + Duration::from_secs(2),
        "answered after {took:?}"
    );
    drop(fw);
    let mut l = connect(
        &resp_addr(&c, c.wait_leader(Duration::from_secs(20)).await),
        false,
    )
    .await;
    assert_eq!(ok(&mut l, &["EXISTS", "during"]).await, Value::Int(0));
    // Healed: the follower forwards again (after an election, perhaps). A
    // plain SET, so that a try whose answer was lost does not fail the next.
    testkit::wait_for(
        Duration::from_secs(20),
        "the healed follower to forward a write",
        || {
            let mut f = f.clone();
            async move { cmd(&mut f, &["SET", "after", "1"]).await.ok() }
        },
    )
    .await;
    assert_eq!(ok(&mut l, &["GET", "after"]).await, bulk("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cli_sets_gets_pipes_scans_and_finds_the_leader() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let (host, port) = resp_addr(&c, leader)
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let cli = |args: &[&str], input: Option<&str>| {
        let mut child = std::process::Command::new("redis-cli")
            .args(["-h", &host, "-p", &port])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli (Debian's redis-tools; scripts/test installs it)");
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["set", "cli/a", "1"], None).trim(), "OK");
    assert_eq!(cli(&["get", "cli/a"], None).trim(), "1");
    // Pipelined input: raw protocol through --pipe.
    let mut pipe = String::new();
    for i in 0..50 {
        pipe += &String::from_utf8(resp::encode(&[
            b"SET",
            format!("cli/p{i:02}").as_bytes(),
            b"v",
        ]))
        .unwrap();
    }
    let out = cli(&["--pipe"], Some(&pipe));
    assert!(out.contains("errors: 0, replies: 50"), "{out}");
    let scanned = cli(&["--scan", "--pattern", "cli/p*"], None);
    let mut keys: Vec<&str> = scanned.lines().collect();
    keys.sort();
    assert_eq!(
        keys,
        (0..50).map(|i| format!("cli/p{i:02}")).collect::<Vec<_>>()
    );
    let info = cli(&["info", "replication"], None);
    assert!(
        info.contains(&format!("inflight_leader_id:{leader}")),
        "{info}"
    );
    // Every node answers.
    for id in c.members() {
        let (h, p) = resp_addr(&c, id)
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .unwrap();
        let out = std::process::Command::new("redis-cli")
            .args(["-h", &h, "-p", &p, "get", "cli/a"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1",
            "node {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_runs_the_lifecycle_of_a_call() {
    // The completed call stays in memory (immutable) for the script to see.
    let c = Cluster::start(ClusterOptions {
        sink: Some(refusing_sink()),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let (host, port) = resp_addr(&c, leader)
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/resp_call_lifecycle.py");
    // Debian's Python, which has Debian's python3-redis (scripts/test
    // installs it), whatever other Python comes first on PATH.
    let out = std::process::Command::new("/usr/bin/python3")
        .args([script, &host, &port])
        .output()
        .expect("/usr/bin/python3");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("call lifecycle: ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_a_connection_is_its_certificate_and_its_roles_apply() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        r#"
[roles.sms-writer]
read = ["call/"]
write = ["sms/"]

[identities]
"sms-dispatcher" = "sms-writer"
"#,
    )
    .unwrap();
    let c = Cluster::start(ClusterOptions {
        tls: true,
        extra_args: vec!["--auth-file".into(), auth.display().to_string()],
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let addr = resp_addr(&c, leader);
    let pki = c.pki.as_ref().unwrap();
    let me = pki.client("sms-dispatcher");
    let tls = Arc::new(testkit::tls::client_config(&pki.ca(), Some(&me)));
    let mut s = RespConn::connect(&addr, Some(tls)).await.unwrap();
    let commands: &[&[&[u8]]] = &[
        &[b"SET", b"sms/1", b"queued"],
        &[b"SET", b"call/1", b"ringing"],
        &[b"GET", b"call/1"],
        &[b"GET", b"sms/1"],
        &[b"MULTI"],
        &[b"SET", b"sms/2", b"v", b"NX"],
        &[b"SET", b"call/2", b"v", b"NX"],
        &[b"EXEC"],
        &[b"SCAN", b"0", b"MATCH", b"sms/*"],
        // One key outside the grant refuses the whole DEL: sms/1 stays.
        &[b"DEL", b"sms/1", b"call/1"],
        &[b"SET", b"sms/1", b"again", b"NX"],
    ];
    s.send(commands).await.unwrap();
    let mut got = Vec::new();
    for _ in commands {
        got.push(s.read().await.unwrap());
    }
    let denied = |v: &resp::Value, what: &str| match v {
        resp::Value::Error(e) => e.starts_with("NOPERM") && e.contains(what),
        _ => false,
    };
    assert_eq!(got[0], resp::Value::Simple("OK".into()), "{got:?}");
    assert!(
        denied(&got[1], "\"sms-dispatcher\" may not write \"call/1\""),
        "{got:?}"
    );
    assert_eq!(
        got[2],
        resp::Value::Bulk(None),
        "reading call/ is granted: {got:?}"
    );
    assert!(denied(&got[3], "may not read \"sms/1\""), "{got:?}");
    assert_eq!(got[5], resp::Value::Simple("QUEUED".into()), "{got:?}");
    assert!(
        denied(&got[7], "ops[1]"),
        "the batch is refused whole: {got:?}"
    );
    assert!(denied(&got[8], "sms/"), "no grant to scan sms/: {got:?}");
    assert!(denied(&got[9], "may not write \"call/1\""), "{got:?}");
    assert_eq!(
        got[10],
        resp::Value::Bulk(None),
        "sms/1 was not deleted: {got:?}"
    );

    // No certificate, or no TLS at all: no answer.
    let anonymous = Arc::new(testkit::tls::client_config(&pki.ca(), None));
    let answered = match RespConn::connect(&addr, Some(anonymous)).await {
        Ok(mut s) => s.call(&[b"PING"]).await.is_ok(),
        Err(_) => false,
    };
    assert!(!answered, "a client without a certificate was answered");
    let mut plain = RespConn::connect(&addr, None).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), plain.call(&[b"PING"])).await;
    assert!(
        matches!(answer, Ok(Err(_))),
        "plaintext on the TLS port: {answer:?}"
    );
}

/// `SUBSCRIBE prefix` through the `redis` crate's pub/sub API: every change
/// under the prefix, in order, as one JSON object each; nothing from other
/// prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_delivers_every_change_under_a_prefix() {
    use futures::StreamExt;
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = c.members().into_iter().find(|id| *id != leader).unwrap();
    // A follower's watch: its window holds what it applied.
    let mut sub = redis::Client::open(format!("redis://{}/", resp_addr(&c, follower)))
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    sub.subscribe("call/").await.unwrap();
    let mut w = connect(&resp_addr(&c, leader), false).await;
    ok(&mut w, &["SET", "sms/1", "queued", "NX"]).await;
    ok(&mut w, &["SET", "call/1", "ringing", "NX"]).await;
    ok(&mut w, &["SET", "call/1", "answered", "XX"]).await;
    ok(&mut w, &["SET", "call/2", "ringing", "NX"]).await;
    ok(&mut w, &["DEL", "call/2"]).await;
    ok(&mut w, &["COMPLETE", "call/1"]).await;
    let mut messages = sub.on_message();
    let mut seen = Vec::new();
    let mut last_revision = 0;
    while seen.len() < 5 {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("a message within 10 s")
            .expect("the subscription is open");
        assert_eq!(m.get_channel_name(), "call/");
        let j: serde_json::Value = serde_json::from_slice(m.get_payload_bytes()).unwrap();
        let revision = j["revision"].as_u64().unwrap();
        assert!(revision > last_revision, "in revision order: {j}");
        last_revision = revision;
        seen.push(format!(
            "{} {} {}",
            j["type"].as_str().unwrap(),
            j["key"].as_str().unwrap(),
            j["value"].as_str().unwrap_or("-")
        ));
    }
    assert_eq!(
        seen,
        [
            "inserted call/1 ringing",
            "updated call/1 answered",
            "inserted call/2 ringing",
            "deleted call/2 ringing",
            "completed call/1 answered",
        ]
    );
}

/// `WATCH.PREFIX prefix from` replays from a revision (a subscriber that
/// reconnects misses nothing); RESP3 delivers pushes beside ordinary
/// replies; RESP2 keeps a subscribed connection to the subscription
/// commands; `UNSUBSCRIBE` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_prefix_resumes_and_both_protocols_carry_the_messages() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let addr = resp_addr(&c, leader);
    let mut w = connect(&addr, false).await;
    ok(&mut w, &["SET", "call/1", "ringing", "NX"]).await;
    let first = mod_revision(&mut w, "call/1").await;
    ok(&mut w, &["SET", "call/1", "answered", "XX"]).await;

    // RESP2: the replay from `first`, then only subscription commands.
    let mut raw = Raw::open(&addr);
    raw.send(&resp::encode(&[
        b"WATCH.PREFIX",
        b"call/",
        first.to_string().as_bytes(),
    ]));
    let mut got = raw.read_until("}\r\n");
    while got.matches("$7\r\nmessage\r\n").count() < 2 {
        got += &raw.read_until("}\r\n");
    }
    assert!(
        got.starts_with("*3\r\n$9\r\nsubscribe\r\n$5\r\ncall/\r\n:1\r\n*3\r\n$7\r\nmessage\r\n"),
        "{got}"
    );
    assert!(
        got.contains("\"type\":\"inserted\"")
            && got.contains("\"value\":\"ringing\"")
            && got.contains("\"value\":\"answered\""),
        "{got}"
    );
    raw.send(&resp::encode(&[b"GET", b"call/1"]));
    let got = raw.read_until("\r\n");
    assert!(got.starts_with("-ERR Can't execute 'get'"), "{got}");
    raw.send(&resp::encode(&[b"PING"]));
    assert_eq!(
        raw.read_until("$0\r\n\r\n"),
        "*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    );
    raw.send(&resp::encode(&[b"UNSUBSCRIBE"]));
    assert_eq!(
        raw.read_until(":0\r\n"),
        "*3\r\n$11\r\nunsubscribe\r\n$5\r\ncall/\r\n:0\r\n"
    );
    raw.send(&resp::encode(&[b"GET", b"call/1"]));
    assert_eq!(raw.read_until("answered\r\n"), "$8\r\nanswered\r\n");

    // RESP3: pushes, and ordinary commands on the same connection.
    let mut raw = Raw::open(&addr);
    raw.send(&resp::encode(&[b"HELLO", b"3"]));
    // The map ends with `modules`, an empty array.
    raw.read_until("$7\r\nmodules\r\n*0\r\n");
    raw.send(&resp::encode(&[b"SUBSCRIBE", b"sms/"]));
    assert_eq!(
        raw.read_until(":1\r\n"),
        ">3\r\n$9\r\nsubscribe\r\n$4\r\nsms/\r\n:1\r\n"
    );
    ok(&mut w, &["SET", "sms/9", "sent", "NX"]).await;
    let got = raw.read_until("}\r\n");
    assert!(
        got.starts_with(">3\r\n$7\r\nmessage\r\n$4\r\nsms/\r\n"),
        "{got}"
    );
    assert!(got.contains("\"key\":\"sms/9\""), "{got}");
    raw.send(&resp::encode(&[b"GET", b"sms/9"]));
    assert_eq!(raw.read_until("sent\r\n"), "$4\r\nsent\r\n");

    // A revision that is not a number, a pattern, a publish: errors.
    let mut r = connect(&addr, false).await;
    for (args, says) in [
        (&["WATCH.PREFIX", "call/", "x"][..], "non-negative integer"),
        (&["PSUBSCRIBE", "call/*"][..], "not patterns"),
        (&["PUBLISH", "call/", "x"][..], "write a record"),
    ] {
        let e = cmd(&mut r, args).await.unwrap_err();
        assert!(e.to_string().contains(says), "{args:?}: {e}");
    }
}
