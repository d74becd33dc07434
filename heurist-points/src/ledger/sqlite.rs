//! The embedded ledger: one SQLite file (bundled SQLite; no system library needed).
//!
//! The file runs in WAL mode with `synchronous = FULL`: a batch is durable once
//! [`LedgerStore::append`](super::LedgerStore::append) returns, and a process killed
//! mid-batch leaves the file as it was before the batch (SQLite rolls the unfinished
//! transaction back on the next open). Writers take the write lock at the start of a
//! batch (`BEGIN IMMEDIATE`), so concurrent processes serialise instead of failing
//! half-way; they wait up to 30 s for it.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use super::sql::{Engine, Param, Sql, Value};
use crate::error::{PointsError, Result};

/// How long a writer waits for another process's write lock.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO ledger_meta (key, value) VALUES ('schema_version', '1');
CREATE TABLE IF NOT EXISTS phases (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    opened_at_ms INTEGER NOT NULL,
    closed_at_ms INTEGER,
    emission_waifu_micro INTEGER,
    emission_llama_micro INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS phases_one_open ON phases ((closed_at_ms IS NULL)) WHERE closed_at_ms IS NULL;
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch INTEGER NOT NULL,
    phase TEXT NOT NULL REFERENCES phases (id),
    kind TEXT NOT NULL CHECK (kind IN ('credit', 'slash_job', 'slash_share', 'boost')),
    miner_id TEXT NOT NULL,
    wallet TEXT NOT NULL,
    currency TEXT NOT NULL CHECK (currency IN ('waifu', 'llama')),
    amount_micro INTEGER NOT NULL,
    job_id TEXT,
    note TEXT,
    created_at_ms INTEGER NOT NULL,
    CHECK ((kind = 'credit' AND amount_micro >= 0)
        OR (kind IN ('slash_job', 'slash_share') AND amount_micro <= 0)
        OR kind = 'boost')
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_one_credit ON entries (job_id) WHERE kind = 'credit';
CREATE UNIQUE INDEX IF NOT EXISTS entries_one_job_slash ON entries (job_id) WHERE kind = 'slash_job';
CREATE UNIQUE INDEX IF NOT EXISTS entries_one_boost ON entries (phase, miner_id, currency) WHERE kind = 'boost';
CREATE INDEX IF NOT EXISTS entries_owner ON entries (phase, miner_id, currency);
CREATE INDEX IF NOT EXISTS entries_batch ON entries (batch);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
";

/// A ledger in one SQLite file.
#[derive(Debug)]
pub struct SqliteLedger {
    conn: Connection,
    location: String,
}

impl SqliteLedger {
    /// Opens (creating if missing) the ledger file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let location = path.as_ref().display().to_string();
        let conn = Connection::open(path.as_ref()).map_err(|source| PointsError::Sqlite { location: location.clone(), source })?;
        Self::init(conn, location)
    }

    /// A ledger in memory, gone when dropped (tests, estimates).
    pub fn open_in_memory() -> Result<Self> {
        let location = ":memory:".to_owned();
        let conn = Connection::open_in_memory().map_err(|source| PointsError::Sqlite { location: location.clone(), source })?;
        Self::init(conn, location)
    }

    fn init(conn: Connection, location: String) -> Result<Self> {
        let err = |source| PointsError::Sqlite { location: location.clone(), source };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // WAL: readers never block the writer; FULL: a returned commit survives power loss.
        let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;")).map_err(err)?;
        Ok(Self { conn, location })
    }

    /// Where the ledger lives (the file path, or `:memory:`).
    pub fn location(&self) -> &str {
        &self.location
    }
}

/// SQL over a borrowed connection (inside a transaction or not).
struct Conn<'a> {
    conn: &'a Connection,
    location: &'a str,
}

impl Conn<'_> {
    fn err(&self, source: rusqlite::Error) -> PointsError {
        PointsError::Sqlite { location: self.location.to_owned(), source }
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Param::Int(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Param::Text(Some(t)) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Param::Int(None) | Param::Text(None) => ToSqlOutput::Borrowed(ValueRef::Null),
        })
    }
}

impl Sql for Conn<'_> {
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Value>>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(|e| self.err(e))? {
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Null => Value::Null,
                    ValueRef::Real(r) => {
                        return Err(PointsError::CorruptLedger { what: "a real number column", value: r.to_string() });
                    }
                    ValueRef::Blob(_) => {
                        return Err(PointsError::CorruptLedger { what: "a blob column", value: sql.to_owned() });
                    }
                });
            }
            out.push(values);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let n = stmt.execute(rusqlite::params_from_iter(params.iter())).map_err(|e| self.err(e))?;
        Ok(n as u64)
    }
}

impl Engine for SqliteLedger {
    const NAME: &'static str = "sqlite";
    // BEGIN IMMEDIATE holds the write lock, so no other writer can take the same id.
    const NEXT_BATCH: &'static str = "SELECT CAST(COALESCE(MAX(batch), 0) + 1 AS BIGINT) FROM entries";
    const LOCK_SHARE: &'static str = "";
    const LOCK_UPDATE: &'static str = "";

    fn read<R>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R> {
        f(&mut Conn { conn: &self.conn, location: &self.location })
    }

    fn write<R>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R> {
        let location = self.location.clone();
        let err = |source| PointsError::Sqlite { location: location.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let out = f(&mut Conn { conn: &tx, location: &self.location })?;
        tx.commit().map_err(err)?;
        Ok(out)
    }
}

super::impl_ledger_store!(SqliteLedger);
