//! Input limits. Every violation names the field, the limit and what was sent.

use super::ApiError;

pub const MAX_KEY_BYTES: usize = 512;
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
pub const DEFAULT_SCAN_LIMIT: u32 = 1_000;
pub const MAX_SCAN_LIMIT: u32 = 10_000;
pub const MAX_REQUEST_ID_BYTES: usize = 128;
pub const MAX_BATCH_OPS: usize = 1_000;
/// A batch (one log entry) may carry values totalling this many times the value limit.
pub const BATCH_VALUE_FACTOR: usize = 4;
/// The longest TTL accepted: 30 days.
pub const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Limits a node enforces on requests.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl Limits {
    pub fn key(&self, field: &str, key: &str) -> Result<(), ApiError> {
        key_rule(field, key, false)
    }

    pub fn value(&self, field: &str, value: &[u8]) -> Result<(), ApiError> {
        if value.len() > self.max_value_bytes {
            return Err(ApiError::invalid(format!(
                "{field}: {} bytes exceeds the limit of {} bytes",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    pub fn if_version(&self, field: &str, v: Option<u64>) -> Result<(), ApiError> {
        if v == Some(0) {
            return Err(ApiError::invalid(format!(
                "{field}: versions start at 1; 0 never matches a record"
            )));
        }
        Ok(())
    }

    pub fn ttl(&self, field: &str, ttl_ms: Option<u64>) -> Result<(), ApiError> {
        match ttl_ms {
            Some(0) => Err(ApiError::invalid(format!("{field}: must be at least 1 ms"))),
            Some(t) if t > MAX_TTL_MS => Err(ApiError::invalid(format!(
                "{field}: {t} ms exceeds the limit of {MAX_TTL_MS} ms (30 days)"
            ))),
            _ => Ok(()),
        }
    }

    pub fn request_id(&self, id: &str) -> Result<(), ApiError> {
        if id.len() > MAX_REQUEST_ID_BYTES {
            return Err(ApiError::invalid(format!(
                "request_id: {} bytes exceeds the limit of {MAX_REQUEST_ID_BYTES} bytes",
                id.len()
            )));
        }
        Ok(())
    }

    pub fn batch_len(&self, n: usize) -> Result<(), ApiError> {
        match n {
            0 => Err(ApiError::invalid("ops: a batch needs at least one op")),
            n if n > MAX_BATCH_OPS => Err(ApiError::invalid(format!(
                "ops: {n} ops exceeds the limit of {MAX_BATCH_OPS} per batch"
            ))),
            _ => Ok(()),
        }
    }

    /// A batch is one log entry: its values together obey four times the value limit.
    pub fn batch_bytes(&self, ops: &[crate::state::Op]) -> Result<(), ApiError> {
        use crate::state::Op;
        let total: usize = ops
            .iter()
            .map(|op| match op {
                Op::Insert { value, .. } | Op::Update { value, .. } => value.len(),
                Op::Complete { value, .. } => value.as_ref().map_or(0, |v| v.len()),
                Op::Delete { .. } => 0,
            })
            .sum();
        let limit = self.max_value_bytes.saturating_mul(BATCH_VALUE_FACTOR);
        if total > limit {
            return Err(ApiError::invalid(format!(
                "ops: values total {total} bytes, over the batch limit of {limit} bytes"
            )));
        }
        Ok(())
    }

    pub fn prefix(&self, field: &str, prefix: &str) -> Result<(), ApiError> {
        key_rule(field, prefix, true)
    }

    /// The page size to use for a requested scan limit.
    pub fn scan_limit(&self, limit: u32) -> Result<usize, ApiError> {
        match limit {
            0 => Ok(DEFAULT_SCAN_LIMIT as usize),
            l if l > MAX_SCAN_LIMIT => Err(ApiError::invalid(format!(
                "limit: {l} exceeds the maximum page size of {MAX_SCAN_LIMIT}"
            ))),
            l => Ok(l as usize),
        }
    }
}

fn key_rule(field: &str, key: &str, may_be_empty: bool) -> Result<(), ApiError> {
    if key.is_empty() && !may_be_empty {
        return Err(ApiError::invalid(format!(
            "{field}: must not be empty (1..={MAX_KEY_BYTES} bytes of UTF-8)"
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "{field}: {} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    if let Some(pos) = key.bytes().position(|b| b == 0) {
        return Err(ApiError::invalid(format!(
            "{field}: contains a NUL byte at offset {pos}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limits_name_field_and_limit() {
        let l = Limits::default();
        assert!(l.key("key", "call/1").is_ok());
        assert!(l.key("key", &"k".repeat(512)).is_ok());
        let e = l.key("key", &"k".repeat(513)).unwrap_err().to_string();
        assert!(
            e.contains("key") && e.contains("513") && e.contains("512"),
            "{e}"
        );
        assert!(l
            .key("key", "")
            .unwrap_err()
            .to_string()
            .contains("must not be empty"));
        assert!(l
            .key("key", "a\0b")
            .unwrap_err()
            .to_string()
            .contains("NUL byte at offset 1"));
    }

    #[test]
    fn value_and_scan_limits() {
        let l = Limits {
            max_value_bytes: 10,
        };
        assert!(l.value("value", &[0; 10]).is_ok());
        let e = l.value("value", &[0; 11]).unwrap_err().to_string();
        assert_eq!(e, "value: 11 bytes exceeds the limit of 10 bytes");
        assert_eq!(l.scan_limit(0).unwrap(), DEFAULT_SCAN_LIMIT as usize);
        assert!(l.scan_limit(MAX_SCAN_LIMIT + 1).is_err());
        assert!(l.if_version("if_version", Some(0)).is_err());
        assert!(l.ttl("ttl_ms", Some(0)).is_err());
        assert!(l
            .ttl("ttl_ms", Some(MAX_TTL_MS + 1))
            .unwrap_err()
            .to_string()
            .contains("30 days"));
        assert!(l
            .request_id(&"r".repeat(129))
            .unwrap_err()
            .to_string()
            .contains("128"));
        assert!(l.batch_len(0).is_err() && l.batch_len(MAX_BATCH_OPS + 1).is_err());
    }
}
