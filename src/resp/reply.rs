//! Answers on a RESP connection, written as RESP2 or, after `HELLO 3`,
//! RESP3. The few shapes a Redis command answers with fit in one small enum;
//! encoding them is a dozen lines per protocol, written here rather than
//! pulled in with a codec crate whose parser we could not use (`parse.rs`).

use bytes::{BufMut, Bytes, BytesMut};

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`
    Simple(&'static str),
    /// `-PREFIX message`: the text holds the prefix (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Null,
    Array(Vec<Reply>),
    /// A map in RESP3; in RESP2 a flat array of keys and values.
    Map(Vec<(Reply, Reply)>),
    /// Out-of-band data (a subscription's messages): a push (`>`) in RESP3,
    /// an array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    pub const OK: Reply = Reply::Simple("OK");

    pub fn err(msg: impl Into<String>) -> Reply {
        let msg: String = msg.into();
        // One line: a CR or LF would end the error early and desynchronise
        // the client.
        Reply::Error(msg.replace(['\r', '\n'], " "))
    }

    pub fn bulk(s: impl Into<Bytes>) -> Reply {
        Reply::Bulk(s.into())
    }

    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(s.into()))
    }

    /// Appends the encoding of this reply to `out`; `resp3` selects the
    /// protocol the connection speaks.
    pub fn encode(&self, resp3: bool, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Int(i) => line(out, b':', i.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Null if resp3 => out.put_slice(b"_\r\n"),
            Reply::Null => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                items.iter().for_each(|r| r.encode(resp3, out));
            }
            Reply::Push(items) => {
                let kind = if resp3 { b'>' } else { b'*' };
                line(out, kind, items.len().to_string().as_bytes());
                items.iter().for_each(|r| r.encode(resp3, out));
            }
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (2 * pairs.len()).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(resp3, out);
                    v.encode(resp3, out);
                }
            }
        }
    }
}

fn line(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(kind);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, resp3: bool) -> String {
        let mut out = BytesMut::new();
        r.encode(resp3, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn encodes_both_protocols() {
        let m = Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]);
        assert_eq!(enc(&m, false), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&m, true), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::Null, false), "$-1\r\n");
        assert_eq!(enc(&Reply::Null, true), "_\r\n");
        assert_eq!(enc(&Reply::OK, true), "+OK\r\n");
        let p = Reply::Push(vec![Reply::text("message"), Reply::Int(1)]);
        assert_eq!(enc(&p, false), "*2\r\n$7\r\nmessage\r\n:1\r\n");
        assert_eq!(enc(&p, true), ">2\r\n$7\r\nmessage\r\n:1\r\n");
        assert_eq!(
            enc(
                &Reply::Array(vec![Reply::bulk(&b"x\r\n"[..]), Reply::Null]),
                false
            ),
            "*2\r\n$3\r\nx\r\n\r\n$-1\r\n"
        );
    }

    #[test]
    fn an_error_stays_on_one_line() {
        assert_eq!(enc(&Reply::err("ERR a\r\nb"), false), "-ERR a  b\r\n");
    }
}
