//! Sinks: where handed-off records go.
//!
//! A sink acknowledges a batch only once it is durable there (fsynced file,
//! committed PostgreSQL transaction, 2xx webhook answer); the worker evicts
//! nothing before that. Delivery is at-least-once: a leader change between
//! the sink's acknowledgement and the committed `Evict` makes the next leader
//! send the same records again, under the same `handoff_id`. The PostgreSQL
//! sink and the file sink skip ids they already hold; a webhook receiver
//! should deduplicate on `handoff_id`.

mod file;
mod postgres;
mod webhook;

use std::path::PathBuf;
use std::str::FromStr;

pub use file::FileSink;
pub use postgres::PostgresSink;
pub use webhook::WebhookSink;

use super::document::Document;

/// A sink as given on the command line: `file:DIR`, `postgres:URL`,
/// `webhook:URL` or `noop`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    File(PathBuf),
    Postgres(String),
    Webhook(String),
    Noop,
}

impl FromStr for SinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // A bare connection URL: the `postgres:` prefix is implied.
            return format!("postgres:{s}").parse();
        }
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));

        let need = |what: &str| -> Result<String, String> {
            if rest.is_empty() {
                Err(format!("sink {s:?}: `{kind}:` needs {what}"))
            } else {
                Ok(rest.to_string())
            }
        };
        match kind {
            "file" => Ok(SinkSpec::File(PathBuf::from(need("a directory")?))),
            "postgres" => {
                let url = need("a connection URL, e.g. postgres://user@127.0.0.1:5432/db")?;
                url.parse::<tokio_postgres::Config>()
                    .map_err(|e| format!("sink {}: bad PostgreSQL URL: {e}", redact(s)))?;
                Ok(SinkSpec::Postgres(url))
            }
            "webhook" => {
                let url = need("an http:// URL")?;
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|e| format!("sink {}: bad webhook URL: {e}", redact(s)))?;
                if parsed.scheme() != "http" {
                    return Err(format!(
                        "sink {}: only http:// webhooks are supported (this build has no TLS); \
                         put a TLS-terminating proxy in front of an https endpoint",
                        redact(s)
                    ));
                }
                Ok(SinkSpec::Webhook(url))
            }
            "noop" if rest.is_empty() => Ok(SinkSpec::Noop),
            _ => Err(format!(
                "sink {s:?}: expected file:DIR, postgres:URL, webhook:URL or noop"
            )),
        }
    }
}

impl std::fmt::Display for SinkSpec {
    /// The spec with any password in a URL hidden, for logs and status.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::File(dir) => write!(f, "file:{}", dir.display()),
            SinkSpec::Postgres(url) => write!(f, "postgres:{}", redact(url)),
            SinkSpec::Webhook(url) => write!(f, "webhook:{}", redact(url)),
            SinkSpec::Noop => write!(f, "noop"),
        }
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

/// An error and its causes, one after the other: transport errors often
/// hide the useful part ("connection refused") in their source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Why a sink did not acknowledge a batch. The batch stays in the outbox.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// An open sink.
pub enum Sink {
    File(FileSink),
    Postgres(PostgresSink),
    Webhook(WebhookSink),
    Noop,
}

impl Sink {
    pub fn open(spec: &SinkSpec, node_id: u64) -> Result<Sink, SinkError> {
        Ok(match spec {
            SinkSpec::File(dir) => Sink::File(FileSink::open(dir, node_id)?),
            SinkSpec::Postgres(url) => Sink::Postgres(PostgresSink::new(url)),
            SinkSpec::Webhook(url) => Sink::Webhook(WebhookSink::new(url)?),
            SinkSpec::Noop => Sink::Noop,
        })
    }

    /// Writes a batch; `Ok` means it is durable in the sink.
    pub async fn write(&mut self, docs: &[Document]) -> Result<(), SinkError> {
        match self {
            Sink::File(s) => s.write(docs).await,
            Sink::Postgres(s) => s.write(docs).await,
            Sink::Webhook(s) => s.write(docs).await,
            Sink::Noop => Ok(()),
        }
    }

    /// Called when this node becomes leader: the previous leader may have
    /// written records this node has not seen, so caches of written ids are
    /// refreshed from the sink itself where it can tell.
    pub async fn on_leadership(&mut self) {
        if let Sink::File(s) = self {
            s.refresh_recent().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_redact() {
        assert_eq!(
            "file:/var/lib/x".parse::<SinkSpec>().unwrap(),
            SinkSpec::File("/var/lib/x".into())
        );
        assert_eq!("noop".parse::<SinkSpec>().unwrap(), SinkSpec::Noop);
        let pg: SinkSpec = "postgres://app:hunter2@127.0.0.1:5432/post"
            .parse()
            .unwrap();
        assert_eq!(
            pg.to_string(),
            "postgres:postgres://app:***@127.0.0.1:5432/post"
        );
        let wh: SinkSpec = "webhook:http://127.0.0.1:9000/in".parse().unwrap();
        assert_eq!(wh.to_string(), "webhook:http://127.0.0.1:9000/in");
        for bad in [
            "file:",
            "s3:bucket",
            "webhook:https://x/",
            "webhook:not a url",
            "noop:x",
            "",
        ] {
            let e = bad.parse::<SinkSpec>().unwrap_err();
            assert!(e.contains("sink"), "{bad}: {e}");
        }
        let e = "postgres:postgres://u:secret@h:notaport/db"
            .parse::<SinkSpec>()
            .unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
