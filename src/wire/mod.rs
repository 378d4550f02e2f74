//! What the server and the client library agree on beyond the protobuf
//! messages: the metadata keys that carry redirects and batch failures, how
//! an endpoint string becomes a gRPC channel, and how a member's two
//! addresses are written ([`MemberAddr`]). Both sides import this
//! module; neither imports the other. Also the one way sizes are written in
//! messages that either side shows to people.

use std::time::Duration;

mod member;
mod tls;
pub use member::MemberAddr;
pub use tls::{ClientTls, ReloadableClientTls};

use tonic::transport::{ClientTlsConfig, Endpoint};

/// Metadata key carrying the leader's address on `UNAVAILABLE` answers.
pub const LEADER_ADDR_KEY: &str = "x-inflight-leader";
/// Metadata key carrying the leader's node id alongside its address.
pub const LEADER_ID_KEY: &str = "x-inflight-leader-id";
/// Request metadata key: "if you are a follower that has lost the leader,
/// hold this call until you can name the next one" (any value). The Rust
/// client sends it on every attempt of a call but the first (hedges,
/// retries, redirects), so the attempt that goes looking for a new leader
/// waits for the election instead of being sent back to the silent leader;
/// first attempts, and frames, are answered at once.
pub const WAIT_LEADER_KEY: &str = "x-inflight-wait-leader";
/// Metadata key carrying the position of the op that failed a batch.
pub const FAILED_OP_KEY: &str = "x-inflight-failed-op";

/// The deadline a gRPC caller sent with its call (the `grpc-timeout`
/// header: up to 8 digits and a unit, H M S m u n), if any and well formed.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The largest message a gRPC client accepts unless told otherwise (tonic's,
/// grpc-go's and grpc-java's default decode limit).
pub const DEFAULT_CLIENT_MESSAGE_BYTES: usize = 4 << 20;

/// The bound on one answer of the record API: every `MutationResponse`,
/// `BatchResponse`, `FrameResult`, `GetResponse` and `ScanResponse` stays
/// within this many encoded bytes, and so does a `WatchResponse` unless the
/// watcher asked for larger ones (`WatchRequest.max_message_bytes`). A
/// default client's limit less 64 KiB, left for the gRPC and HTTP/2 framing
/// and for the few fields counted loosely.
///
/// Answers that carry many records (a batch of completes of large records,
/// a frame of gets, a scan page) keep it by leaving values out: once the
/// next record's value would pass it, that record and every later one of
/// the answer come with `value_omitted` set and an empty value. A single
/// record always fits with its value, since `--max-value-bytes` is at most
/// 1,835,008.
pub const RESPONSE_BYTES: usize = DEFAULT_CLIENT_MESSAGE_BYTES - (64 << 10);

/// The smallest `WatchRequest.max_message_bytes` accepted: room for any one
/// event without its value (a key is at most 512 bytes).
pub const MIN_WATCH_MESSAGE_BYTES: usize = 64 << 10;

/// The largest `WatchRequest.max_message_bytes` accepted, and so the largest
/// message the node sends and the client library accepts.
pub const MAX_WATCH_MESSAGE_BYTES: usize = 64 << 20;

/// A gRPC endpoint for `HOST:PORT`, with the HTTP/2 settings every channel
/// uses, peer or client: fast connect failure, keep-alives that notice a dead
/// peer within seconds, Nagle off, and windows big enough for 4 MiB batches.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    secure_endpoint(addr, None)
}

/// As [`endpoint`], over TLS when `tls` is given (`https://`). The server's
/// certificate must name the host of `addr` (a DNS name or an IP address).
pub fn secure_endpoint(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let e = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20));
    match tls {
        Some(tls) => e.tls_config(tls.clone()),
        None => Ok(e),
    }
}

/// Bytes in the largest binary unit that keeps a digit before the point.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

#[cfg(test)]
mod grpc_timeout_tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    fn with(v: &str) -> Option<Duration> {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        grpc_timeout(&m)
    }

    #[test]
    fn reads_every_unit_and_refuses_malformed_values() {
        assert_eq!(with("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with("5S"), Some(Duration::from_secs(5)));
        assert_eq!(with("2M"), Some(Duration::from_secs(120)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("7u"), Some(Duration::from_micros(7)));
        assert_eq!(with("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "m", "12", "1x", "-1m", "123456789m", "1.5S"] {
            assert_eq!(with(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }
}
