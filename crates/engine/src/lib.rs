#![deny(clippy::unwrap_used)]
//! sluice-engine

pub mod kv;
pub mod scheduler;
pub mod sequence;
