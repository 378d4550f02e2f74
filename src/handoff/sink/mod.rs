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
mod redact;
mod tls;
mod webhook;

use std::path::PathBuf;
use std::str::FromStr;

pub use file::FileSink;
pub use postgres::{Conninfo, PostgresSink, SslMode};
pub use webhook::WebhookSink;

use super::document::Document;

/// A sink as given on the command line: `file:DIR`, `postgres:URL`,
/// `webhook:URL` or `noop`. `Display` and `Debug` hide secrets (see
/// `redact`); only `cli::serve_args::sink_arg` and the sinks themselves see them.
#[derive(Clone, PartialEq, Eq)]
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
                Err(format!(
                    "sink {:?}: `{kind}:` needs {what}",
                    redact::spec(s)
                ))
            } else {
                Ok(rest.to_string())
            }
        };
        match kind {
            "file" => Ok(SinkSpec::File(PathBuf::from(need("a directory")?))),
            "postgres" => {
                let url = need("a connection URL, e.g. postgres://user@127.0.0.1:5432/db")?;
                Conninfo::parse(&url).map_err(|e| format!("sink {}: {e}", redact::spec(s)))?;
                Ok(SinkSpec::Postgres(url))
            }
            "webhook" => {
                let url = need("an http:// or https:// URL")?;
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|e| format!("sink {}: bad webhook URL: {e}", redact::spec(s)))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!(
                        "sink {}: a webhook URL is http:// or https://, not {}://",
                        redact::spec(s),
                        parsed.scheme()
                    ));
                }
                Ok(SinkSpec::Webhook(url))
            }
            "noop" if rest.is_empty() => Ok(SinkSpec::Noop),
            _ => Err(format!(
                "sink {:?}: expected file:DIR, postgres:URL, webhook:URL or noop",
                redact::spec(s)
            )),
        }
    }
}

impl std::fmt::Display for SinkSpec {
    /// The spec with its secrets hidden, for logs, status and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::File(dir) => write!(f, "file:{}", dir.display()),
            SinkSpec::Postgres(url) => write!(f, "postgres:{}", redact::conninfo(url)),
            SinkSpec::Webhook(url) => write!(f, "webhook:{}", redact::url(url, true)),
            SinkSpec::Noop => write!(f, "noop"),
        }
    }
}

impl std::fmt::Debug for SinkSpec {
    /// As `Display`: options structs holding a spec are logged with `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SinkSpec({self})")
    }
}

/// clap's parser for `--sink` and `--shadow-sink`. clap's own message for a
/// value that does not parse quotes the value, secrets and all; this one
/// shows only the redacted spec.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkSpecParser;

impl clap::builder::TypedValueParser for SinkSpecParser {
    type Value = SinkSpec;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SinkSpec, clap::Error> {
        use clap::error::ErrorKind;
        let flag = arg
            .and_then(|a| a.get_long())
            .map_or_else(|| "a sink".to_string(), |l| format!("--{l}"));
        let fail = |kind, msg: String| clap::Error::raw(kind, format!("{msg}\n")).with_cmd(cmd);
        let text = value
            .to_str()
            .ok_or_else(|| fail(ErrorKind::InvalidUtf8, format!("{flag}: not UTF-8")))?;
        text.parse().map_err(|e: String| {
            fail(
                ErrorKind::ValueValidation,
                format!("invalid value for {flag}: {e}"),
            )
        })
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
///
/// `permanent` says the sink refused the batch's content and would refuse it
/// again unchanged (PostgreSQL rejected a document, a webhook answered 400,
/// 413 or 422); the hand-off worker then splits the batch to find the
/// records it refuses. Anything else (no connection, a timeout, a 5xx, a
/// redirect, a full disk) is transient: the same batch is sent again later.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub permanent: bool,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            permanent: false,
        }
    }

    pub fn permanent(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            permanent: true,
        }
    }
}

/// An open sink.
pub enum Sink {
    File(FileSink),
    /// Boxed: its connection settings are large beside the other sinks.
    Postgres(Box<PostgresSink>),
    Webhook(WebhookSink),
    Noop,
}

impl Sink {
    /// Opens the sink `spec` names. `sink_ca_file` (`--sink-ca-file`) holds
    /// the CA certificates trusted by an https webhook and by PostgreSQL's
    /// `verify-ca` / `verify-full` when the URL names no `sslrootcert`;
    /// without it they trust the system's roots.
    pub fn open(
        spec: &SinkSpec,
        node_id: u64,
        sink_ca_file: Option<&std::path::Path>,
    ) -> Result<Sink, SinkError> {
        Ok(match spec {
            SinkSpec::File(dir) => Sink::File(FileSink::open(dir, node_id)?),
            SinkSpec::Postgres(url) => {
                Sink::Postgres(Box::new(PostgresSink::new(url, sink_ca_file)?))
            }
            SinkSpec::Webhook(url) => Sink::Webhook(WebhookSink::new(url, sink_ca_file)?),
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
            "webhook:ftp://x/",
            "postgres:postgres://h/db?sslmode=allow",
            "postgres:postgres://h/db?sslmode=verify-everything",
            "postgres:host=h sslcert=/c.pem",
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

    #[test]
    fn every_secret_form_is_hidden_in_display_and_debug() {
        for (given, shown) in [
            ("postgres://app:s3cret@127.0.0.1/db", "postgres:postgres://app:***@127.0.0.1/db"),
            (
                "postgres:host=127.0.0.1 user=app password=s3cret dbname=db",
                "postgres:host=127.0.0.1 user=app password=*** dbname=db",
            ),
            (
                "postgres:postgres://app@127.0.0.1/db?password=s3cret",
                "postgres:postgres://app@127.0.0.1/db?password=***",
            ),
            (
                "webhook:http://127.0.0.1:9/in?token=s3cret&x=1",
                "webhook:http://127.0.0.1:9/in?token=***&x=1",
            ),
            (
                "webhook:http://127.0.0.1:9/in?api_key=s3cret&key=s3cret&secret=s3cret&password=s3cret",
                "webhook:http://127.0.0.1:9/in?api_key=***&key=***&secret=***&password=***",
            ),
            ("webhook:http://u:s3cret@127.0.0.1:9/in", "webhook:http://u:***@127.0.0.1:9/in"),
            ("webhook:http://s3cret@127.0.0.1:9/in", "webhook:http://***@127.0.0.1:9/in"),
        ] {
            let spec: SinkSpec = given.parse().unwrap();
            assert_eq!(spec.to_string(), shown);
            let debug = format!("{spec:?}");
            assert!(!debug.contains("s3cret") && debug.contains(shown), "{debug}");
            // The secret is kept for the sink itself and for child processes.
            assert!(crate::cli::serve_args::sink_arg(&spec).contains("s3cret"));
        }
    }

    #[test]
    fn parse_errors_and_clap_errors_hide_secrets() {
        use clap::builder::TypedValueParser;
        for bad in [
            "webhook:ftp://u:s3cret@h/in?token=s3cret",
            "postgres:host=h password=s3cret port=notaport",
            "webhok:http://u:s3cret@h/",
            "pg:password=s3cret",
        ] {
            let e = bad.parse::<SinkSpec>().unwrap_err();
            assert!(e.contains("sink") && !e.contains("s3cret"), "{bad}: {e}");
            let cmd = clap::Command::new("inflight");
            let arg = clap::Arg::new("sink").long("sink");
            let e = SinkSpecParser
                .parse_ref(&cmd, Some(&arg), std::ffi::OsStr::new(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("--sink") && !e.contains("s3cret"), "{bad}: {e}");
            // And through the real command line.
            use clap::Parser;
            let argv = [
                "inflight",
                "serve",
                "--id",
                "1",
                "--data-dir",
                "/tmp/x",
                "--sink",
                bad,
            ];
            let e = crate::cli::Cli::try_parse_from(argv)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("--sink") && !e.contains("s3cret"), "{bad}: {e}");
            let argv = ["inflight", "dev", "--sink", bad];
            let e = crate::cli::Cli::try_parse_from(argv)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("--sink") && !e.contains("s3cret"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn webhook_errors_hide_secrets() {
        // Nothing listens on port 1 of loopback: the POST fails to connect.
        let url = "http://u:s3cret@127.0.0.1:1/in?token=s3cret";
        let mut sink = Sink::open(&SinkSpec::Webhook(url.into()), 1, None).unwrap();
        let doc = Document {
            id: crate::state::HandoffId {
                key: "k".into(),
                revision: 1,
            },
            state: "COMPLETED",
            json: "{}".into(),
        };
        let e = sink.write(&[doc]).await.unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:1") && !e.contains("s3cret"), "{e}");
    }
}
