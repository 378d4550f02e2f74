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
//! The connection is opened lazily and reopened after any error. No TLS:
//! use a local socket, a loopback connection or a TLS-terminating proxy.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::{error_chain, SinkError};
use crate::handoff::document::Document;

pub const TABLE: &str = "inflight_postflight";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresSink {
    url: String,
    client: Option<Client>,
}

impl PostgresSink {
    pub fn new(url: &str) -> PostgresSink {
        PostgresSink {
            url: url.to_string(),
            client: None,
        }
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| SinkError::transient(format!("postgres sink: bad URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("inflight");
        }
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            SinkError::transient(format!("postgres sink: cannot connect: {}", describe(&e)))
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres sink connection closed");
            }
        });
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

/// The server's message when there is one (it names the problem), else the
/// client library's.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error_chain(e),
    }
}
