//! The `heurist` binary end to end, one module per area, in one test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod chat;
mod cli;
