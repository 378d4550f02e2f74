//! `webhook:URL`: one HTTP POST per batch, a JSON array of documents.
//!
//! Any 2xx answer acknowledges the batch; anything else, a timeout or a
//! connection error does not, and the batch is sent again later. Requests
//! carry `Content-Type: application/json` and `X-Inflight-Batch-First`, the
//! first record's handoff id. Receivers must deduplicate on `handoff_id`:
//! after a leader change the same records can arrive twice.

use std::time::Duration;

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
    pub fn new(url: &str) -> Result<WebhookSink, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("inflight/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError(format!("webhook sink: {e}")))?;
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
                SinkError(format!(
                    "webhook sink: POST {}: {}",
                    self.shown,
                    error_chain(&e.without_url())
                ))
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        Err(SinkError(format!(
            "webhook sink: POST {} answered {status}{}",
            self.shown,
            if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            }
        )))
    }
}
