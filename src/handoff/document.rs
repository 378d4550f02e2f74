//! The post-flight document: what a sink receives for one handed-off record.
//!
//! One JSON object per record:
//!
//! ```json
//! {"handoff_id":"call/42@1187","key":"call/42","state":"COMPLETED",
//!  "value":{"status":"delivered"},"value_encoding":"json",
//!  "version":4,"create_revision":1020,"completion_revision":1187,
//!  "created_at_ms":1764240000000,"completed_at_ms":1764240012345,
//!  "expires_at_ms":null}
//! ```
//!
//! `value` is the record's value as JSON when it parses as JSON
//! (`value_encoding: "json"`), else its bytes in standard base64
//! (`value_encoding: "base64"`). `completed_at_ms` is the leader's time of
//! the Complete or of the expiry.

use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::state::{HandoffId, Record};

/// One record ready for a sink: its id and its document, rendered once.
#[derive(Clone, Debug)]
pub struct Document {
    pub id: HandoffId,
    pub state: &'static str,
    /// The document as compact JSON (no newline).
    pub json: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Value<'a> {
    /// The client's JSON text as it was (number formats, key order).
    Json(&'a RawValue),
    /// JSON that spanned lines, re-encoded compactly: a document is one line.
    Compacted(serde_json::Value),
    Base64(String),
}

#[derive(Serialize)]
struct Fields<'a> {
    handoff_id: String,
    key: &'a str,
    state: &'static str,
    value: Value<'a>,
    value_encoding: &'static str,
    version: u64,
    create_revision: u64,
    completion_revision: u64,
    created_at_ms: u64,
    completed_at_ms: u64,
    expires_at_ms: Option<u64>,
}

impl Document {
    pub fn new(id: HandoffId, record: &Record) -> Document {
        let raw = std::str::from_utf8(&record.value)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
        let (value, value_encoding) = match raw {
            Some(raw) if raw.get().contains(['\n', '\r']) => {
                match serde_json::from_str::<serde_json::Value>(raw.get()) {
                    Ok(v) => (Value::Compacted(v), "json"),
                    Err(_) => (Value::Base64(base64_of(&record.value)), "base64"),
                }
            }
            Some(raw) => (Value::Json(raw), "json"),
            None => (Value::Base64(base64_of(&record.value)), "base64"),
        };
        let state = record.state.as_str();
        let fields = Fields {
            handoff_id: id.to_string(),
            key: &id.key,
            state,
            value,
            value_encoding,
            version: record.version,
            create_revision: record.create_revision,
            completion_revision: id.revision,
            created_at_ms: record.created_at_ms,
            completed_at_ms: record.updated_at_ms,
            expires_at_ms: record.expires_at_ms,
        };
        // Serializing plain fields and validated JSON text cannot fail.
        let json = serde_json::to_string(&fields).unwrap_or_default();
        Document { id, state, json }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A JSON array of the documents: the body of a webhook POST.
pub fn json_array(docs: &[Document]) -> String {
    let mut out = String::with_capacity(docs.iter().map(|d| d.json.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&d.json);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RecordState;
    use serde_json::Value;

    fn record(value: &[u8]) -> Record {
        Record {
            value: bytes::Bytes::copy_from_slice(value),
            version: 3,
            create_revision: 10,
            mod_revision: 12,
            created_at_ms: 1000,
            updated_at_ms: 2000,
            expires_at_ms: None,
            state: RecordState::Completed,
        }
    }

    fn id() -> HandoffId {
        HandoffId {
            key: "call/1".into(),
            revision: 12,
        }
    }

    #[test]
    fn json_values_are_embedded_as_json() {
        let d = Document::new(id(), &record(br#"{"status":"done","n":[1,2.50]}"#));
        let v: Value = serde_json::from_str(&d.json).unwrap();
        assert_eq!(v["handoff_id"], "call/1@12");
        assert_eq!(v["value_encoding"], "json");
        assert_eq!(v["value"]["status"], "done");
        assert!(d.json.contains(r#""value":{"status":"done","n":[1,2.50]}"#));
        assert_eq!(v["completion_revision"], 12);
        assert_eq!(v["state"], "COMPLETED");
    }

    #[test]
    fn expired_records_and_odd_keys_survive_encoding() {
        let mut rec = record(b" 7 ");
        rec.state = RecordState::Expired;
        rec.expires_at_ms = Some(1500);
        let d = Document::new(
            HandoffId {
                key: "k\"value\":null\n".into(),
                revision: 12,
            },
            &rec,
        );
        let v: Value = serde_json::from_str(&d.json).unwrap();
        assert_eq!(v["key"], "k\"value\":null\n");
        assert_eq!(v["handoff_id"], "k\"value\":null\n@12");
        assert_eq!(v["value"], 7);
        assert_eq!(v["state"], "EXPIRED");
        assert_eq!(v["expires_at_ms"], 1500);
        assert!(!d.json.contains('\n'), "one document is one line");
        let d = Document::new(id(), &record(b"{\n  \"a\": [1,\n 2]\n}\n"));
        assert!(!d.json.contains('\n'), "one document is one line");
        let v: Value = serde_json::from_str(&d.json).unwrap();
        assert_eq!(v["value"]["a"][1], 2);
    }

    #[test]
    fn other_values_are_base64() {
        let d = Document::new(id(), &record(&[0xff, 0x00, b'x']));
        let v: Value = serde_json::from_str(&d.json).unwrap();
        assert_eq!(v["value_encoding"], "base64");
        assert_eq!(v["value"], "/wB4");
        let d = Document::new(id(), &record(b"not json"));
        let v: Value = serde_json::from_str(&d.json).unwrap();
        assert_eq!(v["value_encoding"], "base64");
    }

    #[test]
    fn array_of_documents_is_valid_json() {
        let docs = vec![
            Document::new(id(), &record(b"1")),
            Document::new(id(), &record(b"x")),
        ];
        let v: Value = serde_json::from_str(&json_array(&docs)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(json_array(&[]), "[]");
    }
}
