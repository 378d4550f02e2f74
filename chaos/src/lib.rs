//! The chaos suite: a real cluster, a nemesis, recording clients, and the
//! checkers that judge the recorded history.
//!
//! A history is what clients saw: every operation with its call time, its
//! return time and its outcome. `linearizability` decides whether some order
//! of the operations, consistent with real time, explains every outcome under
//! the record model of DESIGN.md.

pub mod availability;
pub mod cluster;
pub mod history;
pub mod linearizability;
pub mod model;
pub mod nemesis;
pub mod resp;
pub mod resp_watch;
pub mod staleness;
pub mod ttl;
pub mod workload;
