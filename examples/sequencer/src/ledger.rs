//! The points ledger as the sequencer holds it: opened by location (a SQLite file, or a
//! `postgres://` URL that several sequencer processes may share), with its current phase
//! opened if none is, and kept off the async threads.
//!
//! The PostgreSQL client is synchronous and owns a small runtime of its own; that runtime may
//! be neither started nor dropped on one of the server's async threads (tokio refuses both).
//! So the ledger is opened on a blocking thread ([`open`]), every use already runs on one
//! (`app::blocking`), and [`LedgerHandle`] drops it on a plain thread, wherever the last
//! reference to the server's state goes.

use heurist_points::ledger::NewPhase;
use heurist_points::{LedgerStore, RuleSet};

use crate::error::{Result, SequencerError};

/// The ledger, dropped away from any async runtime.
pub(crate) struct LedgerHandle(Option<Box<dyn LedgerStore + Send>>);

impl std::ops::Deref for LedgerHandle {
    type Target = dyn LedgerStore + Send;

    fn deref(&self) -> &Self::Target {
        // Only `drop` takes it out.
        self.0.as_deref().unwrap_or_else(|| unreachable!("the ledger is only taken when dropped"))
    }
}

impl std::ops::DerefMut for LedgerHandle {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_deref_mut().unwrap_or_else(|| unreachable!("the ledger is only taken when dropped"))
    }
}

impl Drop for LedgerHandle {
    fn drop(&mut self) {
        if let Some(ledger) = self.0.take() {
            // A plain thread is outside every runtime; joined so the connection is closed
            // when the sequencer's shutdown returns.
            let _ = std::thread::spawn(move || drop(ledger)).join();
        }
    }
}

fn open_store(location: &str) -> Result<Box<dyn LedgerStore + Send>> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        {
            return Ok(Box::new(heurist_points::ledger::PostgresLedger::connect(location)?));
        }
        #[cfg(not(feature = "postgres"))]
        {
            return Err(SequencerError::BadInput {
                what: "ledger",
                reason: "a postgres:// ledger needs heurist-sequencer built with --features postgres".into(),
            });
        }
    }
    Ok(Box::new(heurist_points::ledger::SqliteLedger::open(location)?))
}

/// Opens the ledger at `location` on a blocking thread and makes sure a phase is open: the
/// one `rules` give for now, or a local one.
pub(crate) async fn open(location: String, rules: RuleSet, now_ms: i64) -> Result<(LedgerHandle, RuleSet)> {
    tokio::task::spawn_blocking(move || {
        let mut ledger = LedgerHandle(Some(open_store(&location)?));
        if ledger.current_phase()?.is_none() {
            let phase = match rules.phase_at(now_ms / 1000) {
                Some(rule) => NewPhase::from_rule(rule),
                None => NewPhase { id: "local-1".into(), opened_at_ms: now_ms, emission: Default::default() },
            };
            // Another sequencer process sharing the ledger may have opened it meanwhile.
            if let Err(e) = ledger.open_phase(&phase)
                && ledger.current_phase()?.is_none()
            {
                return Err(e.into());
            }
        }
        Ok((ledger, rules))
    })
    .await
    .map_err(|e| SequencerError::Task(e.to_string()))?
}
