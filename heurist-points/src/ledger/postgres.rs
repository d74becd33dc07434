//! The network-scale ledger on a PostgreSQL server (feature `postgres`).
//!
//! Uses the synchronous `postgres` client (which runs a small tokio runtime inside; that
//! is why it sits behind a non-default feature). The connection is made without TLS:
//! reach the server over loopback, a private network, or a TLS-terminating proxy.
//! Statements are prepared once per connection and cached. Appends take a share lock on
//! the open phase row, closes an update lock, so that no entry lands in a phase that is
//! being closed; batch ids come from a sequence, so concurrent writers never share one.

use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Statement};

use super::sql::{Engine, Param, Sql, Value};
use crate::error::{PointsError, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '1') ON CONFLICT DO NOTHING;
CREATE SEQUENCE IF NOT EXISTS ledger_batch_seq;
CREATE TABLE IF NOT EXISTS phases (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    opened_at_ms BIGINT NOT NULL,
    closed_at_ms BIGINT,
    emission_waifu_micro BIGINT,
    emission_llama_micro BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS phases_one_open ON phases ((closed_at_ms IS NULL)) WHERE closed_at_ms IS NULL;
CREATE TABLE IF NOT EXISTS entries (
    id BIGSERIAL PRIMARY KEY,
    batch BIGINT NOT NULL,
    phase TEXT NOT NULL REFERENCES phases (id),
    kind TEXT NOT NULL CHECK (kind IN ('credit', 'slash_job', 'slash_share', 'boost')),
    miner_id TEXT NOT NULL,
    wallet TEXT NOT NULL,
    currency TEXT NOT NULL CHECK (currency IN ('waifu', 'llama')),
    amount_micro BIGINT NOT NULL,
    job_id TEXT,
    note TEXT,
    created_at_ms BIGINT NOT NULL,
    CHECK ((kind = 'credit' AND amount_micro >= 0)
        OR (kind IN ('slash_job', 'slash_share') AND amount_micro <= 0)
        OR kind = 'boost')
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_one_credit ON entries (job_id) WHERE kind = 'credit';
CREATE UNIQUE INDEX IF NOT EXISTS entries_one_job_slash ON entries (job_id) WHERE kind = 'slash_job';
CREATE UNIQUE INDEX IF NOT EXISTS entries_one_boost ON entries (phase, miner_id, currency) WHERE kind = 'boost';
CREATE INDEX IF NOT EXISTS entries_owner ON entries (phase, miner_id, currency);
CREATE INDEX IF NOT EXISTS entries_batch ON entries (batch);
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only';
END $$;
CREATE OR REPLACE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
";

/// An arbitrary constant naming the advisory lock that serialises schema creation.
const SCHEMA_LOCK: i64 = 0x0068_6575_7269_7374;

/// A ledger on a PostgreSQL server.
pub struct PostgresLedger {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger").field("statements", &self.statements.len()).finish_non_exhaustive()
    }
}

fn pg(source: postgres::Error) -> PointsError {
    PointsError::Postgres { source }
}

impl PostgresLedger {
    /// Connects to `url` (`postgres://user:password@host:port/db`, options such as
    /// `?options=-csearch_path%3Dledger` allowed) and creates the tables if missing.
    pub fn connect(url: &str) -> Result<Self> {
        let client = Client::connect(url, NoTls).map_err(pg)?;
        Self::init(client, None)
    }

    /// Connects to `url` and keeps the ledger in `schema` (created if missing): one
    /// server, several ledgers. `schema` is letters, digits and `_`.
    pub fn connect_in_schema(url: &str, schema: &str) -> Result<Self> {
        let valid = !schema.is_empty()
            && schema.len() <= 63
            && schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !schema.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(PointsError::InvalidEntry {
                field: "schema",
                value: schema.to_owned(),
                expected: "1 to 63 letters, digits or _, not starting with a digit",
            });
        }
        let client = Client::connect(url, NoTls).map_err(pg)?;
        Self::init(client, Some(schema))
    }

    fn init(mut client: Client, schema: Option<&str>) -> Result<Self> {
        let mut tx = client.transaction().map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).map_err(pg)?;
        if let Some(schema) = schema {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\";"))
                .map_err(pg)?;
        }
        tx.batch_execute(SCHEMA).map_err(pg)?;
        tx.commit().map_err(pg)?;
        if let Some(schema) = schema {
            // `SET` inside the transaction above lasts to its end only; this one stays.
            client.batch_execute(&format!("SET search_path TO \"{schema}\"")).map_err(pg)?;
        }
        Ok(Self { client, statements: HashMap::new() })
    }

    /// Drops the schema of a ledger made by [`PostgresLedger::connect_in_schema`], with
    /// everything in it (tests and benchmarks clean up with it).
    pub fn drop_schema(url: &str, schema: &str) -> Result<()> {
        let mut client = Client::connect(url, NoTls).map_err(pg)?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.replace('"', "")))
            .map_err(pg)
    }
}

/// `?N` parameters as `$N`.
fn dollar_parameters(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// SQL over a client or a transaction, with the connection's statement cache.
struct Conn<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> Conn<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&dollar_parameters(sql)).map_err(pg)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

fn as_sql<'p>(params: &'p [Param<'p>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| -> &'p (dyn ToSql + Sync) {
            match p {
                Param::Int(v) => v,
                Param::Text(v) => v,
            }
        })
        .collect()
}

impl<C: GenericClient> Sql for Conn<'_, C> {
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Value>>> {
        let stmt = self.statement(sql)?;
        let rows = self.client.query(&stmt, &as_sql(params)).map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(row.len());
            for (i, column) in row.columns().iter().enumerate() {
                let value = match *column.type_() {
                    Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(pg)?.map(Value::Int),
                    Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(pg)?.map(|v| Value::Int(v.into())),
                    Type::TEXT | Type::VARCHAR => row.try_get::<_, Option<String>>(i).map_err(pg)?.map(Value::Text),
                    ref other => {
                        return Err(PointsError::CorruptLedger { what: "a column type", value: other.to_string() });
                    }
                };
                values.push(value.unwrap_or(Value::Null));
            }
            out.push(values);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        self.client.execute(&stmt, &as_sql(params)).map_err(pg)
    }
}

impl Engine for PostgresLedger {
    const NAME: &'static str = "postgres";
    const NEXT_BATCH: &'static str = "SELECT nextval('ledger_batch_seq')";
    const LOCK_SHARE: &'static str = " FOR SHARE";
    const LOCK_UPDATE: &'static str = " FOR UPDATE";

    fn read<R>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R> {
        f(&mut Conn { client: &mut self.client, statements: &mut self.statements })
    }

    fn write<R>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R> {
        let mut tx = self.client.transaction().map_err(pg)?;
        // Dropping `tx` on an error rolls it back.
        let out = f(&mut Conn { client: &mut tx, statements: &mut self.statements })?;
        tx.commit().map_err(pg)?;
        Ok(out)
    }
}

super::impl_ledger_store!(PostgresLedger);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_dollars() {
        assert_eq!(dollar_parameters("a = ?1 AND b = ?12 OR c = '?'"), "a = $1 AND b = $12 OR c = '?'");
    }
}
