//! The one place that turns Rust values into bytes and back.
//!
//! Raft log entries, peer messages and snapshots are encoded here with
//! bincode 2 (serde mode, standard config). bincode is final and unmaintained,
//! so nothing else in the crate names it: swapping the format means editing
//! this file and bumping the on-disk format versions that callers write.
//!
//! Every decode names what it decodes ([`Bound`]: a peer message, a WAL
//! record, a snapshot), and that decides how much memory its length
//! prefixes may claim before anything of their size is allocated: the
//! kind's limit, derived from the limits that produce such bytes, and less
//! for a small input. A forged length is refused with an error naming the
//! input's size and the limit, never a panic or an abort.

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
    /// The input claims (through a length prefix) more memory than a value
    /// of its kind and size can take; see [`Bound`]. Deterministic: the same
    /// bytes are always refused.
    #[error(
        "decode: a {len}-byte {kind} claims more than {bound} bytes of memory, over the limit of \
         {bound} for its size (the tier covering {CLAIM_FACTOR} x its size; at most {limit} for \
         any {kind})"
    )]
    OverLimit {
        kind: &'static str,
        len: usize,
        bound: usize,
        limit: usize,
    },
}

/// What kind of bytes are being decoded, which decides how much memory the
/// decoder may claim for them. Each limit is derived from the limits that
/// make the bytes in the first place, so a value this node (or any correctly
/// configured node) wrote always decodes, and a forged length prefix is
/// refused before anything of its size is allocated.
///
/// How bincode counts: `with_limit` bounds the *total* claimed over one
/// decode, not each claim. Every primitive claims its in-memory size (a
/// varint `u64` claims 8, an enum tag 4, a sequence length 8) and every
/// string or byte buffer claims its length *before* it is allocated, so the
/// sum of every claimed length in a value, however deeply nested, stays
/// under the limit. Sequences of other types are not claimed up front in
/// serde mode; serde preallocates at most 1 MiB for them and grows them one
/// decoded (and claimed) element at a time, so a forged element count runs
/// out of input long before it runs out of memory.
///
/// On top of the kind's limit, the bound shrinks with the input (see
/// [`CLAIM_FACTOR`]): a 100-byte message may claim kilobytes, not the
/// kind's full limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// A message between peers (`inflight.v1.Raft`): at most
    /// [`crate::raft::PEER_MESSAGE_BYTES`], the largest gRPC message a peer
    /// accepts. The largest legitimate one is a full AppendEntries, which
    /// [`crate::raft::MAX_VALUE_BYTES_BOUND`] sizes to fit that limit.
    PeerMessage,
    /// A record of the write-ahead log (or the vote file): at most
    /// [`WAL_RECORD_BYTES`], one log entry of the largest size the node can
    /// write.
    WalRecord,
    /// A snapshot payload: at most [`SNAPSHOT_BYTES`], the largest snapshot a
    /// node accepts from a peer.
    Snapshot,
}

impl Bound {
    /// The most this kind of value may ever claim.
    pub const fn limit(self) -> usize {
        match self {
            Bound::PeerMessage => crate::raft::PEER_MESSAGE_BYTES,
            Bound::WalRecord => WAL_RECORD_BYTES,
            Bound::Snapshot => SNAPSHOT_BYTES,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Bound::PeerMessage => "peer message",
            Bound::WalRecord => "WAL record",
            Bound::Snapshot => "snapshot",
        }
    }

    /// The most an input of `len` bytes of this kind may claim: the smallest
    /// of the tiers [`SMALL_CLAIM`], [`MEDIUM_CLAIM`] and the kind's limit
    /// that covers `len` × [`CLAIM_FACTOR`].
    pub fn bound_for(self, len: usize) -> usize {
        let need = len.saturating_mul(CLAIM_FACTOR);
        let limit = self.limit();
        if need <= SMALL_CLAIM && SMALL_CLAIM < limit {
            SMALL_CLAIM
        } else if need <= MEDIUM_CLAIM && MEDIUM_CLAIM < limit {
            MEDIUM_CLAIM
        } else {
            limit
        }
    }
}

/// An encoding claims at most this many bytes per byte it holds, so an
/// input claiming more is forged. In bincode's standard config every claim
/// reads input: a string or byte buffer claims exactly the bytes it reads;
/// a primitive claims its in-memory size (at most 16, a `u128`) and reads at
/// least one byte (a varint); a unit claims and reads nothing.
pub const CLAIM_FACTOR: usize = 16;

/// The claim tiers below a kind's limit. bincode takes its limit as a
/// constant, so the bound for an input's size is the smallest tier that
/// covers it; two tiers keep the code size (one decoder per tier and type)
/// small while refusing a small forged message at 64 KiB, not at its kind's
/// full limit. Inputs up to 4 KiB (votes, heartbeats) get the small tier.
pub const SMALL_CLAIM: usize = 64 << 10;
/// Inputs up to 1 MiB.
pub const MEDIUM_CLAIM: usize = 16 << 20;

/// The largest log entry the node writes, as the value limit allows: up to
/// [`crate::api::BATCH_VALUE_FACTOR`] × [`crate::raft::MAX_VALUE_BYTES_BOUND`]
/// of values plus [`crate::raft::ENTRY_OVERHEAD_BYTES`] for keys, ids and
/// framing, which is [`crate::raft::PEER_MESSAGE_BYTES`] /
/// [`crate::raft::APPEND_ENTRIES_MAX`] (8 MiB). Values and keys claim
/// exactly their length; the overhead budget is twice the keys a batch can
/// hold (1,000 × 512 bytes), which leaves room for the in-memory size of
/// each op's integers and tags.
pub const WAL_RECORD_BYTES: usize = crate::api::BATCH_VALUE_FACTOR
    * crate::raft::MAX_VALUE_BYTES_BOUND
    + crate::raft::ENTRY_OVERHEAD_BYTES;

// A full AppendEntries of the largest entries claims no more than a peer
// message may.
const _: () =
    assert!(WAL_RECORD_BYTES * crate::raft::APPEND_ENTRIES_MAX <= crate::raft::PEER_MESSAGE_BYTES);

/// The largest snapshot a node accepts (received from a peer or read from
/// disk), and the most its decoded payload may claim. A node never holds a
/// state anywhere near this in memory; the bound only stops a forged length
/// from asking for more.
pub const SNAPSHOT_BYTES: usize = 16 << 30;

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

/// Decodes exactly one peer message; bytes left over are an error, not
/// ignored. See [`Bound::PeerMessage`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_bounded(Bound::PeerMessage, bytes)
}

/// Decodes exactly one value of the given kind, within its [`Bound`].
pub fn decode_bounded<T: DeserializeOwned>(kind: Bound, bytes: &[u8]) -> Result<T, CodecError> {
    decode_at_most(kind, bytes, true)
}

/// Decodes the value at the start of a snapshot payload and ignores what
/// follows: for reading a header (the format) before choosing the body type.
pub fn decode_snapshot_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_at_most(Bound::Snapshot, bytes, false)
}

/// The one place bincode decodes: picks the claim bound for the input's
/// kind and size and turns bincode's bare "limit exceeded" into an error
/// naming both.
fn decode_at_most<T: DeserializeOwned>(
    kind: Bound,
    bytes: &[u8],
    whole: bool,
) -> Result<T, CodecError> {
    let bound = kind.bound_for(bytes.len());
    let decoded = match bound {
        SMALL_CLAIM => decode_with(bytes, config().with_limit::<SMALL_CLAIM>()),
        MEDIUM_CLAIM => decode_with(bytes, config().with_limit::<MEDIUM_CLAIM>()),
        _ => match kind {
            Bound::PeerMessage => decode_with(
                bytes,
                config().with_limit::<{ Bound::PeerMessage.limit() }>(),
            ),
            Bound::WalRecord => {
                decode_with(bytes, config().with_limit::<{ Bound::WalRecord.limit() }>())
            }
            Bound::Snapshot => {
                decode_with(bytes, config().with_limit::<{ Bound::Snapshot.limit() }>())
            }
        },
    };
    let (value, read) = decoded.map_err(|e| match e {
        bincode::error::DecodeError::LimitExceeded => CodecError::OverLimit {
            kind: kind.name(),
            len: bytes.len(),
            bound,
            limit: kind.limit(),
        },
        bincode::error::DecodeError::UnexpectedEnd { additional } => CodecError::Decode(format!(
            "the {}-byte {} ends early: at least {additional} more bytes were expected",
            bytes.len(),
            kind.name()
        )),
        e => CodecError::Decode(e.to_string()),
    })?;
    if whole && read != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - read));
    }
    Ok(value)
}

fn decode_with<T: DeserializeOwned, C: bincode::config::Config>(
    bytes: &[u8],
    config: C,
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, config)
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

    /// bincode's standard varint for a length: 253 then a little-endian u64.
    fn varint(n: u64) -> Vec<u8> {
        let mut b = vec![253u8];
        b.extend_from_slice(&n.to_le_bytes());
        b
    }

    #[test]
    fn a_huge_claimed_length_is_refused_before_allocating() {
        let bytes = varint(1 << 40);
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode_bounded::<Vec<u8>>(Bound::Snapshot, &bytes).is_err());
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        term: u64,
        name: String,
        items: Vec<u64>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        id: u64,
        inner: Option<Inner>,
    }

    /// 100 bytes: id = 7, Some, term = 3, then `forged` (a claimed length
    /// and whatever follows), padded with zeros.
    fn hundred_bytes(forged: &[u8]) -> Vec<u8> {
        let mut bytes = vec![7u8, 1, 3];
        bytes.extend_from_slice(forged);
        bytes.resize(100, 0);
        bytes
    }

    #[test]
    fn a_forged_60_gib_string_inside_a_nested_struct_is_refused_naming_the_limit() {
        let bytes = hundred_bytes(&varint(60 << 30));
        let err = decode::<Outer>(&bytes).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                CodecError::OverLimit {
                    bound: SMALL_CLAIM,
                    len: 100,
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("100-byte peer message"), "{text}");
        assert!(text.contains(&format!("limit of {SMALL_CLAIM}")), "{text}");
    }

    #[test]
    fn a_forged_60_gib_sequence_inside_a_nested_struct_is_an_error() {
        // An empty name, then items claiming 60 Gi elements: sequences grow
        // as elements decode, so this runs out of input, not of memory
        // (the allocation bound is checked in `raft::decode_proptests`).
        let mut forged = vec![0u8];
        forged.extend(varint(60 << 30));
        let err = decode::<Outer>(&hundred_bytes(&forged)).unwrap_err();
        assert!(err.to_string().contains("ends early"), "{err}");
    }

    #[test]
    fn a_claim_allocates_up_to_the_bound_and_not_past_it() {
        // A 100-byte input whose string claims just under its 64 KiB bound
        // is allocated (then fails to read); one claiming just over is
        // refused before allocating. The allocation probe sees both.
        let claim = |n: u64| {
            let mut b = varint(n);
            b.resize(100, 0);
            b
        };
        let under = claim((SMALL_CLAIM - 1024) as u64);
        let (r, largest) = crate::alloc_probe::largest_allocation(|| decode::<String>(&under));
        assert!(r.is_err());
        assert!(largest >= SMALL_CLAIM - 1024, "{largest}");
        let over = claim((SMALL_CLAIM + 1) as u64);
        let (r, largest) = crate::alloc_probe::largest_allocation(|| decode::<String>(&over));
        assert!(matches!(r, Err(CodecError::OverLimit { .. })), "{r:?}");
        assert!(largest < 4096, "{largest}");
    }

    #[test]
    fn the_bound_grows_with_the_input_up_to_the_kinds_limit() {
        let peer = crate::raft::PEER_MESSAGE_BYTES;
        assert_eq!(Bound::PeerMessage.bound_for(100), SMALL_CLAIM);
        assert_eq!(Bound::PeerMessage.bound_for(4 << 10), SMALL_CLAIM);
        assert_eq!(Bound::PeerMessage.bound_for((4 << 10) + 1), MEDIUM_CLAIM);
        assert_eq!(Bound::PeerMessage.bound_for(1 << 20), MEDIUM_CLAIM);
        assert_eq!(Bound::PeerMessage.bound_for((1 << 20) + 1), peer);
        assert_eq!(Bound::PeerMessage.bound_for(peer), peer);
        assert_eq!(Bound::WalRecord.bound_for(usize::MAX), WAL_RECORD_BYTES);
        assert_eq!(WAL_RECORD_BYTES, peer / crate::raft::APPEND_ENTRIES_MAX);
        assert_eq!(Bound::Snapshot.bound_for(usize::MAX), SNAPSHOT_BYTES);
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
