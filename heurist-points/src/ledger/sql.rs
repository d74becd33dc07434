//! The ledger logic, written once over a minimal SQL interface that SQLite and
//! PostgreSQL both implement.
//!
//! Statements use `?N` parameters (SQLite's); the PostgreSQL store rewrites them to `$N`.
//! Only `BIGINT` and `TEXT` values cross the interface; sums are cast to `BIGINT` so both
//! servers return the same type. The few statements that differ (table DDL, batch ids,
//! row locks) come from the store's [`Engine`] constants.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    wallet_of, Balance, BalanceQuery, Entry, EntryKind, EntryQuery, GroupBy, NewEntry, NewPhase, Phase,
    PhaseEmission, Receipt,
};
use crate::currency::Currency;
use crate::decimal::{Decimal, SCALE};
use crate::error::{PointsError, Result};

/// A statement parameter.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Param<'a> {
    /// A `BIGINT`, or `NULL`.
    Int(Option<i64>),
    /// A `TEXT`, or `NULL`.
    Text(Option<&'a str>),
}

/// A column value read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Int(i64),
    Text(String),
    Null,
}

/// The SQL a store runs, inside its transaction or not.
pub(crate) trait Sql {
    /// Runs a query and returns its rows.
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Value>>>;
    /// Runs a statement and returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64>;
}

/// A ledger store: how it runs SQL, and the statements that differ between servers.
pub(crate) trait Engine {
    /// `sqlite` or `postgres`.
    const NAME: &'static str;
    /// The next batch id.
    const NEXT_BATCH: &'static str;
    /// Appended to a read of the open phase before appending entries.
    const LOCK_SHARE: &'static str;
    /// Appended to a read of a phase before closing it.
    const LOCK_UPDATE: &'static str;

    /// Runs `f` outside a write transaction.
    fn read<R>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R>;
    /// Runs `f` in one write transaction: committed if it returns `Ok`, rolled back if not.
    fn write<R>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<R>) -> Result<R>;
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn corrupt(what: &'static str, value: &Value) -> PointsError {
    PointsError::CorruptLedger { what, value: format!("{value:?}") }
}

fn int(row: &[Value], i: usize, what: &'static str) -> Result<i64> {
    match row.get(i) {
        Some(Value::Int(v)) => Ok(*v),
        other => Err(corrupt(what, other.unwrap_or(&Value::Null))),
    }
}

fn opt_int(row: &[Value], i: usize, what: &'static str) -> Result<Option<i64>> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => int(row, i, what).map(Some),
    }
}

fn text(row: &[Value], i: usize, what: &'static str) -> Result<String> {
    match row.get(i) {
        Some(Value::Text(v)) => Ok(v.clone()),
        other => Err(corrupt(what, other.unwrap_or(&Value::Null))),
    }
}

fn opt_text(row: &[Value], i: usize, what: &'static str) -> Result<Option<String>> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => text(row, i, what).map(Some),
    }
}

fn currency(row: &[Value], i: usize) -> Result<Currency> {
    let t = text(row, i, "currency")?;
    t.parse().map_err(|_| PointsError::CorruptLedger { what: "currency", value: t })
}

const PHASE_COLUMNS: &str = "id, seq, opened_at_ms, closed_at_ms, emission_waifu_micro, emission_llama_micro";

fn phase_from_row(row: &[Value]) -> Result<Phase> {
    Ok(Phase {
        id: text(row, 0, "phase id")?,
        seq: int(row, 1, "phase seq")?,
        opened_at_ms: int(row, 2, "phase opened_at_ms")?,
        closed_at_ms: opt_int(row, 3, "phase closed_at_ms")?,
        emission: PhaseEmission {
            waifu_micro: opt_int(row, 4, "phase emission")?,
            llama_micro: opt_int(row, 5, "phase emission")?,
        },
    })
}

const ENTRY_COLUMNS: &str =
    "id, batch, phase, kind, miner_id, wallet, currency, amount_micro, job_id, note, created_at_ms";

fn entry_from_row(row: &[Value]) -> Result<Entry> {
    Ok(Entry {
        id: int(row, 0, "entry id")?,
        batch: int(row, 1, "entry batch")?,
        phase: text(row, 2, "entry phase")?,
        kind: text(row, 3, "entry kind")?.parse()?,
        miner_id: text(row, 4, "entry miner_id")?,
        wallet: text(row, 5, "entry wallet")?,
        currency: currency(row, 6)?,
        amount_micro: int(row, 7, "entry amount_micro")?,
        job_id: opt_text(row, 8, "entry job_id")?,
        note: opt_text(row, 9, "entry note")?,
        created_at_ms: int(row, 10, "entry created_at_ms")?,
    })
}

fn open_phase_in(sql: &mut dyn Sql, lock: &str) -> Result<Option<Phase>> {
    let q = format!("SELECT {PHASE_COLUMNS} FROM phases WHERE closed_at_ms IS NULL{lock}");
    sql.query(&q, &[])?.first().map(|r| phase_from_row(r)).transpose()
}

fn phase_by_id(sql: &mut dyn Sql, id: &str, lock: &str) -> Result<Option<Phase>> {
    let q = format!("SELECT {PHASE_COLUMNS} FROM phases WHERE id = ?1{lock}");
    sql.query(&q, &[Param::Text(Some(id))])?.first().map(|r| phase_from_row(r)).transpose()
}

pub(crate) fn open_phase<E: Engine>(engine: &mut E, phase: &NewPhase) -> Result<Phase> {
    if phase.id.trim().is_empty() {
        return Err(PointsError::InvalidEntry { field: "phase id", value: phase.id.clone(), expected: "a non-empty id" });
    }
    engine.write(|sql| {
        if let Some(open) = open_phase_in(sql, E::LOCK_UPDATE)? {
            return Err(PointsError::PhaseAlreadyOpen { open: open.id, requested: phase.id.clone() });
        }
        if phase_by_id(sql, &phase.id, "")?.is_some() {
            return Err(PointsError::DuplicatePhase { id: phase.id.clone() });
        }
        let seq = sql
            .query("SELECT CAST(COALESCE(MAX(seq), 0) + 1 AS BIGINT) FROM phases", &[])?
            .first()
            .map(|r| int(r, 0, "phase seq"))
            .transpose()?
            .unwrap_or(1);
        sql.execute(
            "INSERT INTO phases (id, seq, opened_at_ms, closed_at_ms, emission_waifu_micro, emission_llama_micro) \
             VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
            &[
                Param::Text(Some(&phase.id)),
                Param::Int(Some(seq)),
                Param::Int(Some(phase.opened_at_ms)),
                Param::Int(phase.emission.waifu_micro),
                Param::Int(phase.emission.llama_micro),
            ],
        )?;
        Ok(Phase {
            id: phase.id.clone(),
            seq,
            opened_at_ms: phase.opened_at_ms,
            closed_at_ms: None,
            emission: phase.emission,
        })
    })
}

pub(crate) fn close_phase<E: Engine>(engine: &mut E, id: &str, closed_at_ms: i64) -> Result<Phase> {
    engine.write(|sql| {
        let mut phase = phase_by_id(sql, id, E::LOCK_UPDATE)?
            .ok_or_else(|| PointsError::UnknownPhase { id: id.to_owned(), expected: "known" })?;
        if phase.closed_at_ms.is_some() {
            return Err(PointsError::UnknownPhase { id: id.to_owned(), expected: "open" });
        }
        if closed_at_ms < phase.opened_at_ms {
            return Err(PointsError::InvalidEntry {
                field: "closed_at_ms",
                value: closed_at_ms.to_string(),
                expected: "a time at or after the phase opened",
            });
        }
        sql.execute(
            "UPDATE phases SET closed_at_ms = ?1 WHERE id = ?2",
            &[Param::Int(Some(closed_at_ms)), Param::Text(Some(id))],
        )?;
        phase.closed_at_ms = Some(closed_at_ms);
        Ok(phase)
    })
}

pub(crate) fn current_phase<E: Engine>(engine: &mut E) -> Result<Option<Phase>> {
    engine.read(|sql| open_phase_in(sql, ""))
}

pub(crate) fn phases<E: Engine>(engine: &mut E) -> Result<Vec<Phase>> {
    engine.read(|sql| {
        let q = format!("SELECT {PHASE_COLUMNS} FROM phases ORDER BY seq");
        sql.query(&q, &[])?.iter().map(|r| phase_from_row(r)).collect()
    })
}

/// The row of one entry to insert.
struct Row<'a> {
    kind: EntryKind,
    miner_id: &'a str,
    wallet: &'a str,
    currency: Currency,
    amount_micro: i64,
    job_id: Option<&'a str>,
    note: Option<&'a str>,
}

/// Inserts a row; `None` if a uniqueness rule (one credit, one slash, one boost) refused it.
fn insert(sql: &mut dyn Sql, batch: i64, phase: &str, now: i64, row: &Row<'_>) -> Result<Option<i64>> {
    let rows = sql.query(
        "INSERT INTO entries (batch, phase, kind, miner_id, wallet, currency, amount_micro, job_id, note, created_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING RETURNING id",
        &[
            Param::Int(Some(batch)),
            Param::Text(Some(phase)),
            Param::Text(Some(row.kind.as_str())),
            Param::Text(Some(row.miner_id)),
            Param::Text(Some(row.wallet)),
            Param::Text(Some(row.currency.as_str())),
            Param::Int(Some(row.amount_micro)),
            Param::Text(row.job_id),
            Param::Text(row.note),
            Param::Int(Some(now)),
        ],
    )?;
    rows.first().map(|r| int(r, 0, "entry id")).transpose()
}

fn non_empty(field: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(PointsError::InvalidEntry { field, value: value.to_owned(), expected: "a non-empty string" });
    }
    Ok(())
}

fn phase_balance(sql: &mut dyn Sql, phase: &str, miner_id: &str, currency: Currency) -> Result<i64> {
    let rows = sql.query(
        "SELECT CAST(COALESCE(SUM(amount_micro), 0) AS BIGINT) FROM entries \
         WHERE phase = ?1 AND miner_id = ?2 AND currency = ?3",
        &[Param::Text(Some(phase)), Param::Text(Some(miner_id)), Param::Text(Some(currency.as_str()))],
    )?;
    Ok(rows.first().map(|r| int(r, 0, "balance")).transpose()?.unwrap_or(0))
}

fn append_one(sql: &mut dyn Sql, batch: i64, phase: &str, now: i64, entry: &NewEntry) -> Result<i64> {
    match entry {
        NewEntry::Credit { job_id, miner_id, points } => {
            non_empty("job_id", job_id)?;
            non_empty("miner_id", miner_id)?;
            let amount = i64::try_from(points.micro()).map_err(|_| PointsError::InvalidEntry {
                field: "points",
                value: points.micro().to_string(),
                expected: "at most i64::MAX micro-points",
            })?;
            let wallet = wallet_of(miner_id);
            let row = Row {
                kind: EntryKind::Credit,
                miner_id,
                wallet: &wallet,
                currency: points.currency(),
                amount_micro: amount,
                job_id: Some(job_id),
                note: None,
            };
            insert(sql, batch, phase, now, &row)?.ok_or_else(|| PointsError::DuplicateCredit { job_id: job_id.clone() })
        }
        NewEntry::SlashJob { job_id, reason } => {
            let q = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE kind = 'credit' AND job_id = ?1");
            let credit = sql
                .query(&q, &[Param::Text(Some(job_id))])?
                .first()
                .map(|r| entry_from_row(r))
                .transpose()?
                .ok_or_else(|| PointsError::UnknownJob { job_id: job_id.clone() })?;
            let row = Row {
                kind: EntryKind::SlashJob,
                miner_id: &credit.miner_id,
                wallet: &credit.wallet,
                currency: credit.currency,
                amount_micro: -credit.amount_micro,
                job_id: Some(job_id),
                note: Some(reason),
            };
            insert(sql, batch, phase, now, &row)?.ok_or_else(|| PointsError::DuplicateSlash { job_id: job_id.clone() })
        }
        NewEntry::SlashShare { miner_id, currency, share, reason } => {
            non_empty("miner_id", miner_id)?;
            if share.is_negative() || *share > Decimal::ONE {
                return Err(PointsError::InvalidEntry {
                    field: "share",
                    value: share.to_string(),
                    expected: "a share from 0 to 1",
                });
            }
            let balance = phase_balance(sql, phase, miner_id, *currency)?.max(0);
            // Rounded down: a slash never takes more than the share.
            let slashed = (i128::from(balance) * i128::from(share.millionths())) / i128::from(SCALE);
            let wallet = wallet_of(miner_id);
            let row = Row {
                kind: EntryKind::SlashShare,
                miner_id,
                wallet: &wallet,
                currency: *currency,
                amount_micro: -i64::try_from(slashed).unwrap_or(balance),
                job_id: None,
                note: Some(reason),
            };
            // No uniqueness rule applies to share slashes.
            insert(sql, batch, phase, now, &row)?.ok_or_else(|| PointsError::CorruptLedger {
                what: "share slash refused by a uniqueness rule",
                value: miner_id.clone(),
            })
        }
        NewEntry::Boost { miner_id, currency, amount_micro, source } => {
            non_empty("miner_id", miner_id)?;
            let wallet = wallet_of(miner_id);
            let row = Row {
                kind: EntryKind::Boost,
                miner_id,
                wallet: &wallet,
                currency: *currency,
                amount_micro: *amount_micro,
                job_id: None,
                note: Some(source),
            };
            insert(sql, batch, phase, now, &row)?.ok_or_else(|| PointsError::DuplicateBoost {
                miner_id: miner_id.clone(),
                currency: *currency,
                phase: phase.to_owned(),
            })
        }
    }
}

pub(crate) fn append<E: Engine>(engine: &mut E, entries: &[NewEntry]) -> Result<Receipt> {
    if entries.is_empty() {
        return Ok(Receipt::default());
    }
    engine.write(|sql| {
        let phase = open_phase_in(sql, E::LOCK_SHARE)?.ok_or(PointsError::NoOpenPhase)?;
        let batch = sql
            .query(E::NEXT_BATCH, &[])?
            .first()
            .map(|r| int(r, 0, "batch id"))
            .transpose()?
            .unwrap_or(1);
        let now = now_ms();
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            ids.push(append_one(sql, batch, &phase.id, now, entry)?);
        }
        Ok(Receipt { batch, entry_ids: ids })
    })
}

pub(crate) fn entries<E: Engine>(engine: &mut E, query: &EntryQuery) -> Result<Vec<Entry>> {
    let mut q = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE 1 = 1");
    let mut params: Vec<Param<'_>> = Vec::new();
    let mut filter = |clause: &str, p| {
        params.push(p);
        q.push_str(&format!(" AND {clause} ?{}", params.len()));
    };
    if let Some(a) = query.after_id {
        filter("id >", Param::Int(Some(a)));
    }
    if let Some(j) = &query.job_id {
        filter("job_id =", Param::Text(Some(j)));
    }
    if let Some(b) = query.batch {
        filter("batch =", Param::Int(Some(b)));
    }
    if let Some(m) = &query.miner_id {
        filter("miner_id =", Param::Text(Some(m)));
    }
    q.push_str(" ORDER BY id");
    if let Some(limit) = query.limit {
        q.push_str(&format!(" LIMIT {limit}"));
    }
    engine.read(|sql| sql.query(&q, &params)?.iter().map(|r| entry_from_row(r)).collect())
}

pub(crate) fn balances<E: Engine>(engine: &mut E, query: &BalanceQuery) -> Result<Vec<Balance>> {
    let owner = match query.group_by {
        GroupBy::Miner => "miner_id",
        GroupBy::Wallet => "wallet",
    };
    let mut q = format!(
        "SELECT {owner}, currency, \
         CAST(COALESCE(SUM(CASE WHEN kind = 'credit' THEN amount_micro ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN kind IN ('slash_job', 'slash_share') THEN -amount_micro ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN kind = 'boost' THEN amount_micro ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(amount_micro), 0) AS BIGINT) \
         FROM entries WHERE 1 = 1"
    );
    let mut params: Vec<Param<'_>> = Vec::new();
    let filters = [
        ("phase", query.phase.as_deref()),
        ("currency", query.currency.map(Currency::as_str)),
        ("miner_id", query.miner_id.as_deref()),
        ("wallet", query.wallet.as_deref()),
    ];
    for (column, value) in filters {
        if let Some(v) = value {
            params.push(Param::Text(Some(v)));
            q.push_str(&format!(" AND {column} = ?{}", params.len()));
        }
    }
    q.push_str(&format!(" GROUP BY {owner}, currency"));
    let mut out: Vec<Balance> = engine.read(|sql| {
        sql.query(&q, &params)?
            .iter()
            .map(|r| {
                Ok(Balance {
                    owner: text(r, 0, "balance owner")?,
                    currency: currency(r, 1)?,
                    phase: query.phase.clone(),
                    credits_micro: int(r, 2, "credits")?,
                    slashes_micro: int(r, 3, "slashes")?,
                    boosts_micro: int(r, 4, "boosts")?,
                    total_micro: int(r, 5, "total")?,
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    // Sorted here, not in SQL: server collations order text differently, and the order
    // must be the same on every store (bytes of the owner, then Waifu before Llama).
    out.sort_by(|a, b| a.owner.cmp(&b.owner).then(a.currency.cmp(&b.currency)));
    Ok(out)
}
