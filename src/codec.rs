//! The one place that turns Rust values into bytes and back.
//!
//! Raft log entries, peer messages and snapshots are encoded here with
//! bincode 2 (serde mode, standard config). bincode is final and unmaintained,
//! so nothing else in the crate names it: swapping the format means editing
//! this file and bumping the on-disk format versions that callers write.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encoding never fails for the types we own (no maps with non-string keys,
/// no unsized sequences), but the error is kept so a future format can fail.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(String),
    #[error("decode: {0}")]
    Decode(String),
    #[error("decode: {0} trailing bytes after the value")]
    Trailing(usize),
}

/// No single encoded value we read from the network or the log may claim
/// more than this. bincode allocates a claimed length before reading it, so
/// without a bound a few garbage bytes could ask for terabytes and abort the
/// process.
pub const MAX_DECODED: usize = 1 << 30;

/// Snapshots may be larger; they are CRC-checked before they are decoded, so
/// only a well-formed (not random) input reaches this bound.
pub const MAX_SNAPSHOT_DECODED: usize = 1 << 36;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// `header` followed by the encoding of `value`, in one buffer allocated at
/// its exact size: for large values (snapshots), where growing a buffer by
/// doubling and then copying it behind a header would hold up to three
/// times the value's size at once.
pub fn encode_after<T: Serialize>(header: &[u8], value: &T) -> Result<Vec<u8>, CodecError> {
    let err = |e: bincode::error::EncodeError| CodecError::Encode(e.to_string());
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config()).map_err(err)?;
    let mut out = Vec::with_capacity(header.len() + size.bytes_written);
    out.extend_from_slice(header);
    out.resize(header.len() + size.bytes_written, 0);
    let written = bincode::serde::encode_into_slice(value, &mut out[header.len()..], config())
        .map_err(err)?;
    if written != size.bytes_written {
        return Err(CodecError::Encode(format!(
            "the value encoded to {written} bytes after measuring {}",
            size.bytes_written
        )));
    }
    Ok(out)
}

/// Encodes `value` into `w` as it goes (nothing is built in memory).
pub fn encode_to_writer<T: Serialize, W: std::io::Write>(
    value: &T,
    w: &mut W,
) -> Result<usize, CodecError> {
    bincode::serde::encode_into_std_write(value, w, config())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Appends the encoding of `value` to `buf`.
pub fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    let bytes = encode(value)?;
    buf.extend_from_slice(&bytes);
    Ok(())
}

/// Decodes exactly one value; bytes left over are an error, not ignored.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, config().with_limit::<MAX_DECODED>())
}

/// `decode` for snapshot payloads, with the larger bound.
pub fn decode_snapshot_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, config().with_limit::<MAX_SNAPSHOT_DECODED>())
}

/// Decodes the value at the start of a snapshot payload and ignores what
/// follows: for reading a header (the format) before choosing the body type.
pub fn decode_snapshot_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let config = config().with_limit::<MAX_SNAPSHOT_DECODED>();
    bincode::serde::decode_from_slice(bytes, config)
        .map(|(value, _)| value)
        .map_err(|e| CodecError::Decode(e.to_string()))
}

fn decode_with<T: DeserializeOwned, C: bincode::config::Config>(
    bytes: &[u8],
    config: C,
) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - read));
    }
    Ok(value)
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let v: (u64, String) = (7, "call/1".into());
        let mut bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), v);
        bytes.push(0);
        assert!(matches!(
            decode::<(u64, String)>(&bytes),
            Err(CodecError::Trailing(1))
        ));
    }

    #[test]
    fn a_huge_claimed_length_is_refused_before_allocating() {
        // A varint length prefix claiming 2^40 bytes, then nothing.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode_snapshot_payload::<Vec<u8>>(&bytes).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let r = decode::<(u64, String)>(&[0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.is_err());
    }
}

/// A stable 64-bit fingerprint of a value's encoding (FNV-1a). Used to tell a
/// retried request from a different request that reuses its id; it must not
/// change between builds, which rules out `std`'s randomly keyed hashers.
pub fn fingerprint<T: Serialize>(value: &T) -> Result<u64, CodecError> {
    let bytes = encode(value)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(h)
}

#[cfg(test)]
mod fingerprint_tests {
    #[test]
    fn fingerprint_is_stable_and_tells_bodies_apart() {
        // Pinned: a change here means retries across an upgrade would be misjudged.
        assert_eq!(
            super::fingerprint(&("k", 1u64)).unwrap(),
            super::fingerprint(&("k", 1u64)).unwrap()
        );
        assert_ne!(
            super::fingerprint(&("k", 1u64)).unwrap(),
            super::fingerprint(&("k", 2u64)).unwrap()
        );
        assert_eq!(super::fingerprint(&0u8).unwrap(), 0xaf63_bd4c_8601_b7df);
    }
}
