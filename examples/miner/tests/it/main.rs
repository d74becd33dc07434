//! heurist-miner's integration tests, one module per area, in one test binary (one link of
//! candle and the HTTP stack instead of one per file).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

mod binary;
mod discover;
mod download;
mod e2e;
mod faults;
mod image;
mod kill;
mod sd_download;
mod sd_engine;
mod stream;
mod switch;
