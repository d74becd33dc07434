//! # heurist-miner
//!
//! A native Heurist miner made of the workspace's crates: `heurist-protocol` speaks to the
//! sequencer and signs, `heurist-inference` runs the models. This library holds the parts a
//! test (or a fork) wants to call: the reference-compatible configuration, the spool that
//! keeps every finished job until the sequencer has it, delivery with retries, and the worker
//! loop. `src/main.rs` composes them into the `heurist-miner` binary.

pub mod config;
pub mod deliver;
pub mod devices;
pub mod discover;
pub mod download;
mod error;
pub mod estimate;
pub mod image;
pub mod llm;
pub mod sd;
pub mod signal;
pub mod spool;
pub mod upload;
pub mod worker;

use std::time::{SystemTime, UNIX_EPOCH};

pub use error::{MinerError, Result};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
