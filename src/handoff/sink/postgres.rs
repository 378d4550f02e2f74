//! `postgres:URL`: one row per record in a JSONB table.
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS inflight_postflight (
//!     handoff_id          text PRIMARY KEY,
//!     key                 text NOT NULL,
//!     state               text NOT NULL,
//!     completion_revision bigint NOT NULL,
//!     doc                 jsonb NOT NULL,
//!     handed_off_at       timestamptz NOT NULL DEFAULT now()
//! );
//! ```
//!
//! A batch is one `INSERT ... SELECT FROM unnest(...)` statement (one round
//! trip, one transaction) with `ON CONFLICT (handoff_id) DO NOTHING`, so a
//! batch sent again after a leader change changes nothing. The batch is
//! acknowledged when the statement's transaction has committed.
//!
//! A statement the server refuses for its rows (`refuses_content`) is a
//! permanent refusal: the worker splits the batch to find the records at
//! fault and sets them aside as dead letters. Other errors are retried.
//!
//! The connection is opened lazily and reopened after any error.
//!
//! # TLS
//!
//! The URL's `sslmode` is honoured as libpq does (see `super::tls` for what
//! each check means):
//!
//! | `sslmode`            | TLS                          | server certificate                  |
//! |----------------------|------------------------------|-------------------------------------|
//! | `disable`            | never                        | -                                   |
//! | `prefer` (default)   | if the server offers it      | not checked                         |
//! | `require`            | always                       | not checked (chain checked if the URL gives `sslrootcert`, as libpq) |
//! | `verify-ca`          | always                       | chains to a trusted root            |
//! | `verify-full`        | always                       | chains to a trusted root and names the host |
//!
//! The trusted roots are the URL's `sslrootcert=PATH` (a PEM file, or
//! `system`), else `--sink-ca-file`, else the system's. The host checked by
//! `verify-full` is the URL's host (`host`), not `hostaddr`, so
//! `postgres://db.internal/x?hostaddr=10.0.0.5&sslmode=verify-full` connects
//! to 10.0.0.5 and expects a certificate for `db.internal`. tokio-postgres
//! knows only `disable`, `prefer` and `require` and refuses `sslrootcert`,
//! so [`Conninfo::parse`] takes both keys out of the string (URL or keyword
//! form) before handing the rest to it. `allow` is refused, and so are
//! `sslcert`/`sslkey` (client certificates are not supported).

use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{self, Check, Roots};
use super::{error_chain, SinkError};
use crate::handoff::document::Document;

pub const TABLE: &str = "inflight_postflight";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// libpq's `sslmode`, all but `allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not supported \
                     (disable, prefer, require, verify-ca or verify-full)"
                ))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A PostgreSQL connection string split into what tokio-postgres takes and
/// the TLS settings it does not.
#[derive(Debug)]
pub struct Conninfo {
    pub config: tokio_postgres::Config,
    pub sslmode: SslMode,
    /// The URL's `sslrootcert`.
    pub sslrootcert: Option<Roots>,
}

impl Conninfo {
    /// Parses a URL (`postgres://...?sslmode=verify-full&sslrootcert=/ca.pem`)
    /// or keyword string (`host=h sslmode=verify-full sslrootcert=/ca.pem`).
    /// Errors never quote the string: it may hold a password.
    pub fn parse(s: &str) -> Result<Conninfo, String> {
        let (rest, taken) = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            take_from_url(s)?
        } else {
            take_from_keywords(s)?
        };
        let mut sslmode = SslMode::Prefer;
        let mut sslrootcert = None;
        for (key, value) in taken {
            match key {
                TakenKey::SslMode => sslmode = SslMode::parse(&value)?,
                TakenKey::SslRootCert if value == "system" => sslrootcert = Some(Roots::System),
                TakenKey::SslRootCert if value.is_empty() => {
                    return Err("sslrootcert is empty".into())
                }
                TakenKey::SslRootCert => sslrootcert = Some(Roots::File(value.into())),
                TakenKey::Refused(name) => {
                    return Err(format!(
                        "{name} is not supported: the sink presents no client certificate"
                    ))
                }
            }
        }
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
        config.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Conninfo {
            config,
            sslmode,
            sslrootcert,
        })
    }

    /// What TLS checks of the server, with `--sink-ca-file` as the roots
    /// when the URL names none; `None` for no TLS. Reads the roots.
    pub fn check(&self, sink_ca_file: Option<&std::path::Path>) -> Result<Option<Check>, String> {
        let roots = || {
            let roots = Roots::pick(self.sslrootcert.clone(), sink_ca_file);
            roots
                .load()
                .map_err(|e| format!("sslmode={}: {e}", self.sslmode.as_str()))
        };
        Ok(match self.sslmode {
            SslMode::Disable => None,
            SslMode::Prefer => Some(Check::EncryptOnly),
            // As libpq: a root certificate named for `require` is used.
            SslMode::Require if self.sslrootcert.is_some() => Some(Check::Chain(roots()?)),
            SslMode::Require => Some(Check::EncryptOnly),
            SslMode::VerifyCa => Some(Check::Chain(roots()?)),
            SslMode::VerifyFull => Some(Check::ChainAndName(roots()?)),
        })
    }
}

/// The connection keys this module handles itself.
enum TakenKey {
    SslMode,
    SslRootCert,
    /// Keys libpq knows and tokio-postgres does not, that we do not support
    /// either: refused by name rather than by tokio-postgres's "unknown
    /// option".
    Refused(&'static str),
}

fn taken_key(key: &str) -> Option<TakenKey> {
    Some(match key {
        "sslmode" => TakenKey::SslMode,
        "sslrootcert" => TakenKey::SslRootCert,
        "sslcert" => TakenKey::Refused("sslcert"),
        "sslkey" => TakenKey::Refused("sslkey"),
        _ => return None,
    })
}

type Taken = Vec<(TakenKey, String)>;

/// Takes our keys out of a URL's query string.
fn take_from_url(s: &str) -> Result<(String, Taken), String> {
    let Some((base, query)) = s.split_once('?') else {
        return Ok((s.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match taken_key(&percent_decode(key)?) {
            Some(k) => taken.push((k, percent_decode(value)?)),
            None => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

/// As libpq decodes a URL's parameters: `%XX` escapes only (`+` stays).
fn percent_decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "a URL parameter is not UTF-8 once decoded".to_string())
}

/// Takes our keys out of a keyword string (`key=value key='quoted \' value'`),
/// keeping every other pair exactly as written.
fn take_from_keywords(s: &str) -> Result<(String, Taken), String> {
    let mut rest = String::with_capacity(s.len());
    let mut taken = Vec::new();
    let mut chars = s.char_indices().peekable();
    let mut kept_from = 0;
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            // Not ours to judge: tokio-postgres says what is wrong.
            return Ok((s.to_string(), Vec::new()));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut end = s.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped)) => value.push(escaped),
                    None => return Err("a connection string ends in a lone backslash".into()),
                },
                '\'' if quoted => {
                    end = i + 1;
                    break;
                }
                c if c.is_whitespace() && !quoted => {
                    end = i;
                    break;
                }
                c => value.push(c),
            }
        }
        if let Some(k) = taken_key(&key) {
            rest.push_str(&s[kept_from..start]);
            kept_from = end;
            taken.push((k, value));
        }
    }
    rest.push_str(&s[kept_from..]);
    Ok((rest, taken))
}

/// How the sink connects: in the clear or with rustls.
enum Connector {
    Plain,
    Tls(MakeRustlsConnect),
}

pub struct PostgresSink {
    config: tokio_postgres::Config,
    sslmode: SslMode,
    connector: Connector,
    client: Option<Client>,
}

impl PostgresSink {
    /// Parses the connection string and reads the trusted roots the
    /// `sslmode` needs (the URL's `sslrootcert`, else `sink_ca_file`, else
    /// the system's); an error here is a configuration error.
    pub fn new(
        url: &str,
        sink_ca_file: Option<&std::path::Path>,
    ) -> Result<PostgresSink, SinkError> {
        let fail = |e: String| SinkError::permanent(format!("postgres sink: {e}"));
        let info = Conninfo::parse(url).map_err(fail)?;
        let connector = match info.check(sink_ca_file).map_err(fail)? {
            None => Connector::Plain,
            Some(check) => Connector::Tls(MakeRustlsConnect::new(
                tls::client_config(&check).map_err(fail)?,
            )),
        };
        let mut config = info.config;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("inflight");
        }
        Ok(PostgresSink {
            config,
            sslmode: info.sslmode,
            connector,
            client: None,
        })
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        let failed = |e: tokio_postgres::Error| SinkError::transient(self.connect_error(&e));
        let client = match &self.connector {
            Connector::Plain => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "postgres sink connection closed");
                    }
                });
                client
            }
            Connector::Tls(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "postgres sink connection closed");
                    }
                });
                client
            }
        };
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (
                    handoff_id text PRIMARY KEY,
                    key text NOT NULL,
                    state text NOT NULL,
                    completion_revision bigint NOT NULL,
                    doc jsonb NOT NULL,
                    handed_off_at timestamptz NOT NULL DEFAULT now()
                )"
            ))
            .await
            .map_err(|e| {
                SinkError::transient(format!(
                    "postgres sink: cannot create table {TABLE}: {}",
                    describe(&e)
                ))
            })?;
        Ok(client)
    }

    pub async fn write(&mut self, docs: &[Document]) -> Result<(), SinkError> {
        if docs.is_empty() {
            return Ok(());
        }
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        let ids: Vec<String> = docs.iter().map(|d| d.id.to_string()).collect();
        let keys: Vec<&str> = docs.iter().map(|d| d.id.key.as_str()).collect();
        let states: Vec<&str> = docs.iter().map(|d| d.state).collect();
        let revisions: Vec<i64> = docs
            .iter()
            .map(|d| i64::try_from(d.id.revision).unwrap_or(i64::MAX))
            .collect();
        let bodies: Vec<&str> = docs.iter().map(|d| d.json.as_str()).collect();
        let sql = format!(
            "INSERT INTO {TABLE} (handoff_id, key, state, completion_revision, doc)
             SELECT h, k, s, r, d::jsonb
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[]) AS b(h, k, s, r, d)
             ON CONFLICT (handoff_id) DO NOTHING"
        );
        match client
            .execute(&sql, &[&ids, &keys, &states, &revisions, &bodies])
            .await
        {
            Ok(_) => {
                self.client = Some(client);
                Ok(())
            }
            // The connection is dropped: the next attempt starts clean.
            Err(e) => {
                let message = format!(
                    "postgres sink: insert of {} records failed: {}",
                    docs.len(),
                    describe(&e)
                );
                Err(if refuses_content(&e) {
                    SinkError::permanent(message)
                } else {
                    SinkError::transient(message)
                })
            }
        }
    }
}

/// Whether the server refused the rows themselves, so that the same rows
/// would be refused again: SQLSTATE class 22 (data exception: a document
/// `jsonb` will not take, such as one holding `\u0000`), 23 (integrity
/// constraint violation: a constraint an operator added to the table) or
/// 54 (program limit exceeded: a document too large). Every other error
/// (connection, permissions, a missing table, a serialization failure, the
/// server shutting down) says nothing about the rows and is retried.
fn refuses_content(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23" | "54"))
}

impl PostgresSink {
    /// Why a connection failed; a certificate the `sslmode` refuses says so
    /// and names the host it was checked for.
    fn connect_error(&self, e: &tokio_postgres::Error) -> String {
        let mode = self.sslmode.as_str();
        let Some(tls) = tls::rustls_cause(e) else {
            return format!(
                "postgres sink: cannot connect (sslmode={mode}): {}",
                describe(e)
            );
        };
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "(none)".into(),
        };
        match tls {
            rustls::Error::InvalidCertificate(why) => format!(
                "postgres sink: sslmode={mode}: certificate for host {host} not valid: {why}"
            ),
            other => format!("postgres sink: sslmode={mode}: TLS with host {host} failed: {other}"),
        }
    }
}

/// The server's message when there is one (it names the problem), else the
/// client library's.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Conninfo {
        Conninfo::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_both_forms_and_the_rest_kept() {
        for s in [
            "postgres://app:pw@db.internal:6543/post?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&connect_timeout=7",
            "host=db.internal port=6543 user=app password='p w' dbname=post application_name=x sslmode = verify-full sslrootcert='/etc/ca dir/ca.pem' connect_timeout=7",
        ] {
            let c = parsed(s);
            assert_eq!(c.sslmode, SslMode::VerifyFull, "{s}");
            assert_eq!(
                c.sslrootcert,
                Some(Roots::File("/etc/ca dir/ca.pem".into())),
                "{s}"
            );
            assert_eq!(
                c.config.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
            assert_eq!(c.config.get_hosts(), &[Host::Tcp("db.internal".into())]);
            assert_eq!(c.config.get_ports(), &[6543]);
            assert_eq!(c.config.get_user(), Some("app"));
            assert_eq!(c.config.get_dbname(), Some("post"));
            assert_eq!(c.config.get_application_name(), Some("x"));
            assert_eq!(c.config.get_connect_timeout(), Some(&Duration::from_secs(7)));
        }
        assert_eq!(
            parsed("host=h password='p w'").config.get_password(),
            Some(&b"p w"[..])
        );
    }

    #[test]
    fn each_sslmode_maps_to_what_it_checks() {
        use tokio_postgres::config::SslMode as Tp;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let cases = [
            ("", SslMode::Prefer, Tp::Prefer),
            ("?sslmode=disable", SslMode::Disable, Tp::Disable),
            ("?sslmode=prefer", SslMode::Prefer, Tp::Prefer),
            ("?sslmode=require", SslMode::Require, Tp::Require),
            ("?sslmode=verify-ca", SslMode::VerifyCa, Tp::Require),
            (
                "?sslmode=disable&sslmode=verify-full",
                SslMode::VerifyFull,
                Tp::Require,
            ),
        ];
        for (query, ours, theirs) in cases {
            let c = parsed(&format!("postgres://u@h/db{query}"));
            assert_eq!(
                (c.sslmode, c.config.get_ssl_mode()),
                (ours, theirs),
                "{query}"
            );
            // The roots are read only where the mode checks the chain.
            let check = c.check(Some(&missing));
            match ours {
                SslMode::Disable => assert!(matches!(check, Ok(None))),
                SslMode::Prefer | SslMode::Require => {
                    assert!(matches!(check, Ok(Some(Check::EncryptOnly))))
                }
                SslMode::VerifyCa | SslMode::VerifyFull => {
                    let e = check.unwrap_err();
                    assert!(
                        e.contains(ours.as_str()) && e.contains("missing-ca.pem"),
                        "{query}: {e}"
                    );
                }
            }
        }
        // `require` with a root certificate named checks the chain, as libpq.
        let c = parsed(&format!(
            "postgres://u@h/db?sslmode=require&sslrootcert={}",
            missing.display()
        ));
        assert!(c.check(None).unwrap_err().contains("missing-ca.pem"));
        assert_eq!(
            parsed("postgres://u@h/db?sslrootcert=system").sslrootcert,
            Some(Roots::System)
        );
    }

    #[test]
    fn unsupported_tls_settings_are_refused_by_name_without_quoting_secrets() {
        for (s, says) in [
            (
                "postgres://u:s3cret@h/db?sslmode=allow",
                "sslmode=\"allow\"",
            ),
            (
                "host=h password=s3cret sslmode=verify",
                "sslmode=\"verify\"",
            ),
            ("postgres://u:s3cret@h/db?sslcert=/c.pem", "sslcert"),
            ("host=h password=s3cret sslkey=/k.pem", "sslkey"),
            (
                "postgres://u:s3cret@h/db?sslrootcert=",
                "sslrootcert is empty",
            ),
            ("host=h password=s3cret port=x", "bad PostgreSQL URL"),
        ] {
            let e = Conninfo::parse(s).unwrap_err();
            assert!(e.contains(says) && !e.contains("s3cret"), "{s}: {e}");
        }
    }
}
