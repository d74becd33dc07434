//! Integration tests of heurist-points, one module per area.
//!
//! The ledger suite (`ledger`, `ledger_props`, `crash`) is written once over
//! `LedgerStore` and instantiated for SQLite and, with `--features postgres` and
//! `HEURIST_TEST_POSTGRES_URL` set, for PostgreSQL. Under CI (`CI=true`) a missing URL
//! fails the PostgreSQL tests instead of skipping them.

// The helpers here are test code too (clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod backends;
mod boost;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod crash;
mod gpu;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod ledger;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod ledger_props;
mod points;
mod presets;
mod rules;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod support;
