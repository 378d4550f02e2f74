//! `webhook:URL`: one HTTP POST per batch, a JSON array of documents.
//!
//! Any 2xx answer acknowledges the batch. 400, 413 and 422 refuse its
//! content: the worker splits the batch to find the records the receiver
//! refuses and sets them aside as dead letters. Anything else, a timeout or
//! a connection error does not acknowledge it, and the batch is sent again
//! later. Redirects are never followed: a 3xx is a failure (the receiver
//! stored nothing; point the sink at the final URL), never an
//! acknowledgement. Requests
//! carry `Content-Type: application/json` and `X-Inflight-Batch-First`, the
//! first record's handoff id. Receivers must deduplicate on `handoff_id`:
//! after a leader change the same records can arrive twice.
//!
//! An `https://` URL is checked as a browser would: the certificate must
//! chain to a trusted root and name the URL's host. The roots are
//! `--sink-ca-file` when given (only it is trusted then), else the system's
//! (see `super::tls`). A certificate that fails the check is a transient
//! failure like a refused connection: the batch stays in the outbox and is
//! sent again, and the sink's `last_error` says what was wrong with it.

use std::time::Duration;

use super::tls::{self, Check, Roots};
use super::{error_chain, redact, SinkError};
use crate::handoff::document::{json_array, Document};

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct WebhookSink {
    url: String,
    /// The URL as logged: any password hidden.
    shown: String,
    http: reqwest::Client,
}

impl WebhookSink {
    /// For an https URL, reads the trusted roots (`sink_ca_file`, else the
    /// system's); an error here is a configuration error.
    pub fn new(
        url: &str,
        sink_ca_file: Option<&std::path::Path>,
    ) -> Result<WebhookSink, SinkError> {
        let fail = |e: String| SinkError::permanent(format!("webhook sink: {e}"));
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("inflight/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .https_only(url.starts_with("https://"));
        if url.starts_with("https://") {
            let roots = Roots::pick(None, sink_ca_file).load().map_err(fail)?;
            builder = builder.use_preconfigured_tls(
                tls::client_config(&Check::ChainAndName(roots)).map_err(fail)?,
            );
        }
        let http = builder.build().map_err(|e| fail(e.to_string()))?;
        Ok(WebhookSink {
            url: url.to_string(),
            shown: redact::url(url, true),
            http,
        })
    }

    pub async fn write(&mut self, docs: &[Document]) -> Result<(), SinkError> {
        let Some(first) = docs.first() else {
            return Ok(());
        };
        let resp = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-inflight-batch-first", first.id.to_string())
            .body(json_array(docs))
            .send()
            .await
            .map_err(|e| {
                // reqwest's message quotes the URL, secrets and all.
                let e = e.without_url();
                SinkError::transient(match tls::rustls_cause(&e) {
                    Some(rustls::Error::InvalidCertificate(why)) => format!(
                        "webhook sink: POST {}: server certificate not valid: {why}",
                        self.shown
                    ),
                    _ => format!("webhook sink: POST {}: {}", self.shown, error_chain(&e)),
                })
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let redirect = if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| redact::url(l, true))
                .unwrap_or_default();
            format!(
                " (redirect to {to:?} not followed: a redirect is not an acknowledgement; \
                 point the sink at the final URL)"
            )
        } else {
            String::new()
        };
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        let message = format!(
            "webhook sink: POST {} answered {status}{redirect}{}",
            self.shown,
            if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            }
        );
        Err(if refuses_content(status) {
            SinkError::permanent(message)
        } else {
            SinkError::transient(message)
        })
    }
}

/// The answers that refuse the request's content, so that the same body
/// would be refused again: malformed (400), too large (413), unprocessable
/// (422). 401, 403, 404, 415 (every request is `application/json`, so it is
/// about the receiver), 429 and 5xx are about the receiver or its
/// configuration and are retried. A receiver that refuses every body with
/// one of these is caught by the worker: records are set aside only when
/// others of their batch were taken.
fn refuses_content(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 422)
}
