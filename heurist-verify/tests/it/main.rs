//! Integration tests of heurist-verify, one module per area.

// The helpers here are test code too (clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod audit;
mod cache;
mod checksum;
#[cfg(feature = "inference")]
mod greedy_scored;
#[cfg(all(feature = "image", feature = "inference"))]
mod image;
#[cfg(all(feature = "image", feature = "inference"))]
mod image_network;
#[cfg(feature = "inference")]
mod llm;
mod metrics;
#[cfg(feature = "inference")]
mod other_engines;
#[cfg(feature = "inference")]
mod seeded;
mod signatures;
#[cfg(feature = "inference")]
mod tool_order;

use std::path::PathBuf;

pub(crate) fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// Where a sibling crate keeps its fixtures (the signature vectors live with the protocol).
pub(crate) fn sibling_fixture(krate: &str, rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(krate).join("tests/fixtures").join(rel)
}
