//! The cluster under test: `testkit`'s cluster of real `inflight serve`
//! processes, each on its own loopback address (127.X.Y.id) with its peer
//! traffic sent from it, so that nftables rules between addresses act as
//! links between hosts. Every node hands off to one shared file sink.

use std::path::{Path, PathBuf};

use inflight::handoff::SinkSpec;
pub use testkit::{Addresses, Cluster, ClusterOptions};

pub const GRPC_PORT: u16 = 17_000;
pub const HTTP_PORT: u16 = 18_000;
pub const PEER_PORT: u16 = 19_000;
pub const RESP_PORT: u16 = 16_000;

/// The shared file sink's directory of a run in `dir`.
pub fn sink_dir(dir: &Path) -> PathBuf {
    dir.join("postflight")
}

/// Starts `n` nodes of `bin` with data and logs in `dir`, on 127.`net`.id;
/// with `tls`, every port over TLS (`ClusterOptions::tls`).
pub fn start(
    bin: PathBuf,
    dir: PathBuf,
    n: u64,
    net: (u8, u8),
    tls: bool,
) -> anyhow::Result<Cluster> {
    Ok(Cluster::launch(ClusterOptions {
        bin,
        nodes: n,
        sink: Some(SinkSpec::File(sink_dir(&dir))),
        dir: Some(dir),
        addresses: Addresses::Subnet {
            net,
            grpc_port: GRPC_PORT,
            peer_port: PEER_PORT,
            http_port: HTTP_PORT,
            resp_port: RESP_PORT,
        },
        tls,
        ..ClusterOptions::default()
    })?)
}
