//! Input limits. Every violation names the field, the limit and what was sent.

use super::ApiError;

pub const MAX_KEY_BYTES: usize = 512;
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
pub const DEFAULT_SCAN_LIMIT: u32 = 1_000;
pub const MAX_SCAN_LIMIT: u32 = 10_000;

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
    pub fn key(&self, key: &str) -> Result<(), ApiError> {
        key_rule("key", key, false)
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

    pub fn if_version(&self, v: Option<u64>) -> Result<(), ApiError> {
        if v == Some(0) {
            return Err(ApiError::invalid(
                "if_version: versions start at 1; 0 never matches a record",
            ));
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
        assert!(l.key("call/1").is_ok());
        assert!(l.key(&"k".repeat(512)).is_ok());
        let e = l.key(&"k".repeat(513)).unwrap_err().to_string();
        assert!(
            e.contains("key") && e.contains("513") && e.contains("512"),
            "{e}"
        );
        assert!(l
            .key("")
            .unwrap_err()
            .to_string()
            .contains("must not be empty"));
        assert!(l
            .key("a\0b")
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
        assert!(l.if_version(Some(0)).is_err());
    }
}
