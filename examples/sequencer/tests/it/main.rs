//! heurist-sequencer's integration tests, one module per area, in one test binary (one link
//! of the HTTP stack and the ledger instead of one per file).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod endpoints_prop;
mod fifo;
mod load;
mod loopback;
mod portal_browser;
mod s3;
mod s3_binary;
mod shared_ledger;
mod stream_credit;
