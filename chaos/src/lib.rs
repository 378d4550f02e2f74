//! The chaos suite's history model and checkers.
//!
//! A history is what clients saw: every operation with its call time, its
//! return time and its outcome. `linearizability` decides whether some order
//! of the operations, consistent with real time, explains every outcome under
//! the record model of DESIGN.md.

pub mod history;
pub mod linearizability;
pub mod model;
