//! Reading commands off a RESP connection.
//!
//! A client sends a command as an array of bulk strings (`*2\r\n$3\r\nGET\r\n
//! $1\r\nk\r\n`), or, typed by hand, as one inline line (`GET k\r\n`). The
//! parser is ours, not a codec crate's, for one reason: a command with an
//! oversized bulk string must be refused without buffering it and without
//! losing the connection. The parser reads the length, skips that many bytes
//! as they arrive, and hands back an error for that one command; the crates
//! we looked at (redis-protocol, resp-rs) buffer a whole frame before they
//! look at it, and treat a size limit as the end of the stream.
//!
//! What ends the connection (a [`ProtocolError`]): bytes that are not RESP
//! (`*` and `$` headers that are not numbers, a bulk string not followed by
//! CRLF, a non-bulk element in a command array), an inline line or header
//! longer than [`MAX_LINE_BYTES`], and an array announcing more than
//! [`MAX_ARRAY_LEN`] elements (Redis's own limit). What does not (a
//! [`Parsed::Refused`]): a bulk string past the value limit, a command with
//! more arguments than [`Limits::max_args`], or more bytes in all than
//! [`Limits::max_command_bytes`].

use bytes::{Buf, Bytes, BytesMut};

/// An inline command, or an array or bulk header, longer than this closes
/// the connection (Redis: 64 KiB inline).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// An array header above this closes the connection (Redis: 1,048,576).
pub const MAX_ARRAY_LEN: u64 = 1 << 20;

/// What a connection accepts in one command.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest bulk string.
    pub max_bulk_bytes: usize,
    /// The most arguments, command name included.
    pub max_args: usize,
    /// The most bytes of arguments in all.
    pub max_command_bytes: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A command: its name and arguments, as sent.
    Command(Vec<Bytes>),
    /// A command that was read whole and skipped; the message says why.
    Refused(String),
}

/// The bytes are not RESP: the connection is closed after this is sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

/// A command array being read, element by element, across reads.
#[derive(Debug)]
struct Partial {
    /// Elements still to read.
    left: u64,
    args: Vec<Bytes>,
    bytes: usize,
    /// Set once the command is refused: the rest is read and dropped.
    refused: Option<String>,
    /// Bytes of a refused bulk string still to skip, its CRLF included.
    skip: u64,
}

/// The parser of one connection's input.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    partial: Option<Partial>,
}

impl Parser {
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            partial: None,
        }
    }

    /// The next command in `buf`, consuming what it read; `None` when more
    /// bytes are needed. Bytes of a refused bulk string are consumed as they
    /// come, so `buf` never holds more than a line and one bulk string.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Parsed>, ProtocolError> {
        loop {
            let Some(p) = self.partial.as_mut() else {
                if buf.is_empty() {
                    return Ok(None);
                }
                if buf[0] != b'*' {
                    return inline(buf, &self.limits);
                }
                let Some(line) = take_line(buf)? else {
                    return Ok(None);
                };
                let n = number(&line[1..], "multibulk length")?;
                if n > MAX_ARRAY_LEN as i64 {
                    return Err(ProtocolError("invalid multibulk length".into()));
                }
                if n <= 0 {
                    // Redis reads `*0` and `*-1` as no command at all.
                    continue;
                }
                let refused = (n as usize > self.limits.max_args).then(|| {
                    format!(
                        "ERR too many arguments: {n}, at most {} in one command",
                        self.limits.max_args
                    )
                });
                self.partial = Some(Partial {
                    left: n as u64,
                    args: Vec::with_capacity(if refused.is_some() { 0 } else { n as usize }),
                    bytes: 0,
                    refused,
                    skip: 0,
                });
                continue;
            };
            if p.left == 0 {
                let p = self.partial.take().expect("a partial command");
                return Ok(Some(match p.refused {
                    Some(why) => Parsed::Refused(why),
                    None => Parsed::Command(p.args),
                }));
            }
            if p.skip > 0 {
                let n = (buf.len() as u64).min(p.skip);
                buf.advance(n as usize);
                p.skip -= n;
                if p.skip > 0 {
                    return Ok(None);
                }
                p.left -= 1;
                continue;
            }
            // A bulk header and its data, or wait for more.
            let Some(end) = find_crlf(buf)? else {
                return Ok(None);
            };
            if buf[0] != b'$' {
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    char::from(buf[0]).escape_default()
                )));
            }
            let len = number(&buf[1..end], "bulk length")?;
            if len < 0 {
                return Err(ProtocolError("invalid bulk length".into()));
            }
            let len = len as u64;
            let too_big = if len > self.limits.max_bulk_bytes as u64 {
                Some(format!(
                    "ERR argument {} is a bulk string of {len} bytes, more than the limit of {} bytes",
                    p.args.len() + 1,
                    self.limits.max_bulk_bytes
                ))
            } else if p.bytes as u64 + len > self.limits.max_command_bytes as u64 {
                Some(format!(
                    "ERR command of more than {} bytes of arguments",
                    self.limits.max_command_bytes
                ))
            } else {
                None
            };
            if too_big.is_some() || p.refused.is_some() {
                buf.advance(end + 2);
                p.refused = p.refused.take().or(too_big);
                p.args = Vec::new();
                p.skip = len + 2;
                continue;
            }
            let total = end + 2 + len as usize + 2;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            if &buf[total - 2..total] != b"\r\n" {
                return Err(ProtocolError("bulk string not followed by CRLF".into()));
            }
            buf.advance(end + 2);
            let data = buf.split_to(len as usize).freeze();
            buf.advance(2);
            p.bytes += data.len();
            p.args.push(data);
            p.left -= 1;
        }
    }
}

/// An inline command: words separated by spaces, up to the end of the line.
fn inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let Some(pos) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE_BYTES {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(None);
    };
    if pos > MAX_LINE_BYTES {
        return Err(ProtocolError("too big inline request".into()));
    }
    let line = buf.split_to(pos + 1).freeze();
    let text = line.slice(..line.len() - 1);
    let args: Vec<Bytes> = text
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| text.slice_ref(w))
        .collect();
    if args.len() > limits.max_args {
        return Ok(Some(Parsed::Refused(format!(
            "ERR too many arguments: {}, at most {} in one command",
            args.len(),
            limits.max_args
        ))));
    }
    // An empty line (telnet's Enter) is an empty command, which the
    // connection passes over without an answer.
    Ok(Some(Parsed::Command(args)))
}

/// The position of the CRLF ending the line at the start of `buf`.
fn find_crlf(buf: &BytesMut) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_LINE_BYTES + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some(end)),
        None if buf.len() > MAX_LINE_BYTES => Err(ProtocolError("too big header line".into())),
        None => Ok(None),
    }
}

/// Takes the line at the start of `buf`, without its CRLF.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    let Some(end) = find_crlf(buf)? else {
        return Ok(None);
    };
    let line = buf.split_to(end).freeze();
    buf.advance(2);
    Ok(Some(line))
}

fn number(digits: &[u8], what: &str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ProtocolError(format!("invalid {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk_bytes: 8,
        max_args: 4,
        max_command_bytes: 12,
    };

    fn all(input: &[u8]) -> (Vec<Parsed>, Result<(), ProtocolError>, usize) {
        let mut p = Parser::new(LIMITS);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match p.next(&mut buf) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => return (out, Ok(()), buf.len()),
                Err(e) => return (out, Err(e), buf.len()),
            }
        }
    }

    fn cmd(words: &[&str]) -> Parsed {
        Parsed::Command(words.iter().map(|w| Bytes::from(w.to_string())).collect())
    }

    #[test]
    fn reads_pipelined_arrays_and_inline_commands() {
        let (out, end, _) =
            all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*1\r\n$4\r\nPING\r\n  SET  a b\n");
        assert_eq!(end, Ok(()));
        assert_eq!(
            out,
            vec![
                cmd(&["GET", "k"]),
                cmd(&["PING"]),
                cmd(&["PING"]),
                cmd(&["SET", "a", "b"])
            ]
        );
    }

    #[test]
    fn waits_for_the_rest_of_a_command_split_anywhere() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nxy\r\n";
        for cut in 0..input.len() {
            let mut p = Parser::new(LIMITS);
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(p.next(&mut buf), Ok(None), "cut at {cut}");
            buf.extend_from_slice(&input[cut..]);
            assert_eq!(
                p.next(&mut buf),
                Ok(Some(Parsed::Command(vec![
                    Bytes::from("SET"),
                    Bytes::from("k"),
                    Bytes::from("v\r\nxy")
                ]))),
                "cut at {cut}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_oversized_bulk_string_refuses_its_command_and_the_next_one_is_read() {
        // 100 bytes is over the 8-byte limit. Fed one byte at a time, the
        // parser never holds more than its largest accepted element
        // ("$3\r\nSET\r\n", 9 bytes), so never the oversized one.
        let mut input = b"*3\r\n$3\r\nSET\r\n$100\r\n".to_vec();
        input.extend([b'x'; 100]);
        input.extend(b"\r\n$1\r\nv\r\n*1\r\n$4\r\nPING\r\n");
        let mut p = Parser::new(LIMITS);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in &input {
            buf.extend_from_slice(&[*b]);
            while let Some(c) = p.next(&mut buf).unwrap() {
                out.push(c);
            }
            assert!(buf.len() <= 9, "buffered {}", buf.len());
        }
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], Parsed::Refused(m) if m.contains("argument 2 is a bulk string of 100 bytes, more than the limit of 8")),
            "{out:?}"
        );
        assert_eq!(out[1], cmd(&["PING"]));
    }

    #[test]
    fn too_many_arguments_or_bytes_refuse_the_command_only() {
        let (out, end, _) = all(b"A B C D E\r\n*5\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\ne\r\n*4\r\n$4\r\nMGET\r\n$8\r\n12345678\r\n$1\r\nx\r\n$1\r\ny\r\nPING\r\n");
        assert_eq!(end, Ok(()));
        // Inline, then as an array.
        assert!(matches!(&out[0], Parsed::Refused(m) if m.contains("too many arguments: 5")));
        assert!(matches!(&out[1], Parsed::Refused(m) if m.contains("too many arguments: 5")));
        assert!(matches!(&out[2], Parsed::Refused(m) if m.contains("more than 12 bytes")));
        assert_eq!(out[3], cmd(&["PING"]));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for input in [
            &b"*x\r\n"[..],
            b"*2\r\n:1\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$2\r\nabcd\r\n",
            b"*99999999\r\n",
            b"*1\r\n$abc\r\n",
        ] {
            let (_, end, _) = all(input);
            assert!(end.is_err(), "{:?}", String::from_utf8_lossy(input));
        }
        let long = vec![b'a'; MAX_LINE_BYTES + 10];
        assert_eq!(
            all(&long).1,
            Err(ProtocolError("too big inline request".into()))
        );
        let mut header = b"*".to_vec();
        header.extend(std::iter::repeat_n(b'1', MAX_LINE_BYTES + 10));
        assert!(all(&header).1.is_err());
    }

    #[test]
    fn empty_arrays_and_lines_are_no_command() {
        let (out, end, left) = all(b"*0\r\n*-1\r\n\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(end, Ok(()));
        assert_eq!(left, 0);
        assert_eq!(out, vec![cmd(&[]), cmd(&["PING"])]);
    }
}
