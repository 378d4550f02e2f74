//! A small RESP2 client of our own, for the chaos suite's RESP clients and
//! the RESP port's TLS test: plain or TLS (with the harness's certificate),
//! pipelined sends, one reply at a time. Written here rather than taken from
//! the `redis` crate so that it reads exactly what the server wrote (every
//! error text, nil versus empty) and speaks TLS through the same rustls as
//! the rest of the harness.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: nil.
    Bulk(Option<Vec<u8>>),
    /// `None`: a nil array.
    Array(Option<Vec<Value>>),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct RespConn {
    io: BufReader<Box<dyn Io>>,
}

/// The wire form of one command.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl RespConn {
    /// Connects to `addr`; with `tls`, over TLS (server name `localhost`,
    /// which the test certificates carry).
    pub async fn connect(
        addr: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> std::io::Result<RespConn> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?;
                Box::new(
                    tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await?,
                )
            }
        };
        Ok(RespConn {
            io: BufReader::new(io),
        })
    }

    /// Sends commands in one write (a pipeline).
    pub async fn send(&mut self, commands: &[&[&[u8]]]) -> std::io::Result<()> {
        let bytes: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
        self.send_raw(&bytes).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let w = self.io.get_mut();
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// The next reply.
    pub async fn read(&mut self) -> std::io::Result<Value> {
        Box::pin(read_value(&mut self.io)).await
    }

    /// One command, one reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Value> {
        self.send(&[args]).await?;
        self.read().await
    }
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// The longest reply line read (a simple string, an error, a header).
const MAX_LINE: u64 = 64 << 10;
/// The longest bulk string read: a length past it means the stream is not
/// a reply stream (or is out of step), and allocating it would only hurt.
const MAX_BULK: i64 = 64 << 20;

async fn line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut l = String::new();
    if (&mut *r).take(MAX_LINE).read_line(&mut l).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    l.strip_suffix("\r\n")
        .map(str::to_string)
        .ok_or_else(|| bad(format!("a line without CRLF: {l:?}")))
}

async fn read_value<R: tokio::io::AsyncBufRead + Unpin + Send>(
    r: &mut R,
) -> std::io::Result<Value> {
    let l = line(r).await?;
    let (kind, rest) = l.split_at(1.min(l.len()));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("not a number: {l:?}")))
    };
    Ok(match kind {
        "+" => Value::Simple(rest.to_string()),
        "-" => Value::Error(rest.to_string()),
        ":" => Value::Int(number()?),
        "$" => match number()? {
            -1 => Value::Bulk(None),
            n if n > MAX_BULK => {
                return Err(bad(format!(
                    "a bulk string longer than {MAX_BULK} bytes: {l:?}"
                )))
            }
            n if n >= 0 => {
                let mut data = vec![0; n as usize + 2];
                r.read_exact(&mut data).await?;
                data.truncate(n as usize);
                Value::Bulk(Some(data))
            }
            _ => return Err(bad(format!("bad bulk length: {l:?}"))),
        },
        "*" => match number()? {
            -1 => Value::Array(None),
            n if n >= 0 => {
                let mut items = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    items.push(Box::pin(read_value(r)).await?);
                }
                Value::Array(Some(items))
            }
            _ => return Err(bad(format!("bad array length: {l:?}"))),
        },
        _ => return Err(bad(format!("not a RESP2 reply: {l:?}"))),
    })
}
