//! What the server and the client library agree on beyond the protobuf
//! messages: the metadata keys that carry redirects and batch failures, and
//! how an endpoint string becomes a gRPC channel. Both sides import this
//! module; neither imports the other. Also the one way sizes are written in
//! messages that either side shows to people.

use std::time::Duration;

use tonic::transport::Endpoint;

/// Metadata key carrying the leader's address on `UNAVAILABLE` answers.
pub const LEADER_ADDR_KEY: &str = "x-inflight-leader";
/// Metadata key carrying the leader's node id alongside its address.
pub const LEADER_ID_KEY: &str = "x-inflight-leader-id";
/// Metadata key carrying the position of the op that failed a batch.
pub const FAILED_OP_KEY: &str = "x-inflight-failed-op";

/// A gRPC endpoint for `HOST:PORT`, with the HTTP/2 settings every channel
/// uses, peer or client: fast connect failure, keep-alives that notice a dead
/// peer within seconds, Nagle off, and windows big enough for 4 MiB batches.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20)))
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
