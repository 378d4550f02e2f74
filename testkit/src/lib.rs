//! The one test harness of `tests/`, `chaos/` and `benches/`.
//!
//! - [`cluster`]: a cluster of real `inflight serve` processes (command lines
//!   from `inflight::cli::serve_args`), kill / stop / pause / restart / join;
//! - [`net`]: nftables link cuts between the nodes' loopback addresses;
//! - [`postgres`]: a throwaway PostgreSQL server per test;
//! - [`sink`]: reading what the file sink wrote;
//! - [`handoff`]: the HANDED_OFF checker, which proves every evicted record was
//!   in its sink *before* the `Evict` was proposed;
//! - [`wait`]: polling a condition with a deadline, and free ports;
//! - [`http`]: a test's HTTP (or https) receiver on a free port, and
//!   `/metrics` samples;
//! - [`ca`]: a certificate authority per test, for the TLS servers above;
//! - [`tls`]: a test CA and the node and client certificates it signs, for
//!   TLS clusters (`ClusterOptions::tls`);
//! - [`ttl`]: inserting with a TTL and checking that expiry runs.

pub mod ca;
pub mod cluster;
pub mod handoff;
pub mod http;
pub mod net;
pub mod postgres;
pub mod resp;
pub mod sink;
pub mod tls;
pub mod ttl;
pub mod wait;

pub use cluster::{
    resident_bytes, Addresses, Cluster, ClusterOptions, Node, Reaper, HARNESS_CLIENT,
};
pub use wait::{free_port, free_port_block, wait_for, wait_until, wait_until_blocking};

/// Milliseconds since the Unix epoch on this machine's clock: the clock the
/// leader's stamps follow (`inflight::raft::wall_clock_ms`).
pub fn now_ms() -> u64 {
    inflight::raft::wall_clock_ms()
}
