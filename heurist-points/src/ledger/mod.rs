//! The points ledger: append-only entries, phases, balances, pro-rata emission.
//!
//! Every change to a balance is an entry: a job credit, a slash of a job, a slash of a
//! share of a miner's phase balance, or a boost adjustment. Entries are never edited or
//! deleted (the stores refuse it with a trigger), so a slash is auditable as its own
//! entry. Amounts are signed integer micro-points. Each entry belongs to the phase open
//! when it is written; a ledger has at most one open phase, and closing it opens the way
//! for the next. A job id is credited at most once and slashed at most once; a miner gets
//! at most one boost adjustment per currency and phase.
//!
//! [`LedgerStore`] is the one API; [`SqliteLedger`] (feature `sqlite`, a file in WAL mode)
//! and [`PostgresLedger`] (feature `postgres`) implement it with the same SQL and the same
//! logic (`sql.rs`) and pass the same test suite. [`LedgerStore::append`] writes a batch
//! in one transaction: all of it or none of it, even if the process is killed mid-batch.
//!
//! Invariant, per miner, currency and phase: `total = credits - slashes + boosts`.

mod emission;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::boost::{boost_entries, BoostSource};
use crate::currency::{Currency, Points};
use crate::decimal::Decimal;
use crate::error::{PointsError, Result};
use crate::rules::PhaseRule;

#[cfg(feature = "postgres")]
pub use self::postgres::PostgresLedger;
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteLedger;

/// The wallet of a miner id: the `0x` address before the first `-`, lowercased.
///
/// ```
/// assert_eq!(heurist_points::ledger::wallet_of("0xAbC-rtx4090-1"), "0xabc");
/// ```
pub fn wallet_of(miner_id: &str) -> String {
    let head = miner_id.split('-').next().unwrap_or(miner_id);
    if head.starts_with("0x") || head.starts_with("0X") {
        head.to_ascii_lowercase()
    } else {
        head.to_owned()
    }
}

/// The kind of a ledger entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Points of an accepted job.
    Credit,
    /// The removal of one job's points.
    SlashJob,
    /// The removal of a share of a miner's phase balance.
    SlashShare,
    /// A boost adjustment (NFT, staking).
    Boost,
}

impl EntryKind {
    /// The name stored in the ledger.
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::Credit => "credit",
            EntryKind::SlashJob => "slash_job",
            EntryKind::SlashShare => "slash_share",
            EntryKind::Boost => "boost",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EntryKind {
    type Err = PointsError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "credit" => Ok(EntryKind::Credit),
            "slash_job" => Ok(EntryKind::SlashJob),
            "slash_share" => Ok(EntryKind::SlashShare),
            "boost" => Ok(EntryKind::Boost),
            other => Err(PointsError::CorruptLedger { what: "entry kind", value: other.to_owned() }),
        }
    }
}

/// An entry to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewEntry {
    /// Credit a job's points to a miner. Refused if the job id is already credited.
    Credit {
        /// The job id (unique in the ledger).
        job_id: String,
        /// The miner id (`0xaddr-tag`).
        miner_id: String,
        /// The job's points.
        points: Points,
    },
    /// Remove a credited job's points (anti-cheat). Recorded in the open phase.
    SlashJob {
        /// The credited job id.
        job_id: String,
        /// Why, for the audit trail.
        reason: String,
    },
    /// Remove `share` (0 to 1) of a miner's balance in the open phase, rounded down.
    SlashShare {
        /// The miner id.
        miner_id: String,
        /// The currency.
        currency: Currency,
        /// The share removed, 0 to 1.
        share: Decimal,
        /// Why, for the audit trail.
        reason: String,
    },
    /// A boost adjustment, signed micro-points.
    Boost {
        /// The miner id.
        miner_id: String,
        /// The currency.
        currency: Currency,
        /// Micro-points added (or removed, if negative).
        amount_micro: i64,
        /// The boost source (`nft`, `stheu`).
        source: String,
    },
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry id, increasing in append order.
    pub id: i64,
    /// The batch (one [`LedgerStore::append`] call) the entry came in.
    pub batch: i64,
    /// The phase it belongs to.
    pub phase: String,
    /// What it records.
    pub kind: EntryKind,
    /// The miner id.
    pub miner_id: String,
    /// The miner's wallet.
    pub wallet: String,
    /// The currency.
    pub currency: Currency,
    /// Signed micro-points: positive for credits, negative for slashes.
    pub amount_micro: i64,
    /// The job id (credits and job slashes).
    pub job_id: Option<String>,
    /// The reason of a slash or the source of a boost.
    pub note: Option<String>,
    /// When it was written, Unix milliseconds.
    pub created_at_ms: i64,
}

/// A fixed emission for a phase, shared pro rata by contribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseEmission {
    /// Waifu micro-points emitted in the phase.
    pub waifu_micro: Option<i64>,
    /// Llama micro-points emitted in the phase.
    pub llama_micro: Option<i64>,
}

impl PhaseEmission {
    /// The emission of `currency`, if fixed.
    pub fn of(&self, currency: Currency) -> Option<i64> {
        match currency {
            Currency::Waifu => self.waifu_micro,
            Currency::Llama => self.llama_micro,
        }
    }
}

/// A phase to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPhase {
    /// The phase id.
    pub id: String,
    /// When it opens, Unix milliseconds.
    pub opened_at_ms: i64,
    /// A fixed emission, or none for points as earned.
    pub emission: PhaseEmission,
}

impl NewPhase {
    /// The phase of a rule set's `[[phases]]` entry.
    pub fn from_rule(rule: &PhaseRule) -> Self {
        let micro = |d: Option<Decimal>| d.map(Decimal::millionths);
        let emission = rule.emission.unwrap_or_default();
        Self {
            id: rule.id.clone(),
            opened_at_ms: rule.start_unix_s.saturating_mul(1000),
            emission: PhaseEmission { waifu_micro: micro(emission.waifu), llama_micro: micro(emission.llama) },
        }
    }
}

/// A stored phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// The phase id.
    pub id: String,
    /// 1 for the first phase opened, then 2, 3...
    pub seq: i64,
    /// When it opened, Unix milliseconds.
    pub opened_at_ms: i64,
    /// When it closed, Unix milliseconds; none while open.
    pub closed_at_ms: Option<i64>,
    /// Its fixed emission, if any.
    pub emission: PhaseEmission,
}

/// The result of an append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The batch id (0 for an empty append).
    pub batch: i64,
    /// The new entries' ids, in the order given.
    pub entry_ids: Vec<i64>,
}

/// How balances are grouped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Per miner id.
    #[default]
    Miner,
    /// Per wallet.
    Wallet,
}

/// Which balances to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalanceQuery {
    /// Per miner or per wallet.
    pub group_by: GroupBy,
    /// One phase, or all phases summed.
    pub phase: Option<String>,
    /// One currency, or both (never summed together).
    pub currency: Option<Currency>,
    /// One miner id.
    pub miner_id: Option<String>,
    /// One wallet.
    pub wallet: Option<String>,
}

impl BalanceQuery {
    /// Per-miner balances over all phases.
    pub fn miners() -> Self {
        Self::default()
    }

    /// Per-wallet balances over all phases.
    pub fn wallets() -> Self {
        Self { group_by: GroupBy::Wallet, ..Self::default() }
    }

    /// Only `phase`.
    pub fn in_phase(mut self, phase: impl Into<String>) -> Self {
        self.phase = Some(phase.into());
        self
    }

    /// Only `currency`.
    pub fn currency(mut self, currency: Currency) -> Self {
        self.currency = Some(currency);
        self
    }

    /// Only `miner_id`.
    pub fn miner(mut self, miner_id: impl Into<String>) -> Self {
        self.miner_id = Some(miner_id.into());
        self
    }

    /// Only `wallet`.
    pub fn wallet(mut self, wallet: impl Into<String>) -> Self {
        self.wallet = Some(wallet_of(&wallet.into()));
        self
    }
}

/// A balance of one owner (miner id or wallet) in one currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// The miner id or wallet.
    pub owner: String,
    /// The currency.
    pub currency: Currency,
    /// The phase, when the query named one.
    pub phase: Option<String>,
    /// Credited micro-points.
    pub credits_micro: i64,
    /// Slashed micro-points (a positive number).
    pub slashes_micro: i64,
    /// Boost adjustments, micro-points.
    pub boosts_micro: i64,
    /// `credits - slashes + boosts`, micro-points.
    pub total_micro: i64,
}

impl Balance {
    /// The total in points, for display only (sum [`Balance::total_micro`] instead).
    pub fn total_points(&self) -> f64 {
        self.total_micro as f64 / 1_000_000.0
    }
}

/// Which entries to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryQuery {
    /// Entries with an id above this.
    pub after_id: Option<i64>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Only this job's entries.
    pub job_id: Option<String>,
    /// Only this batch.
    pub batch: Option<i64>,
    /// Only this miner's entries.
    pub miner_id: Option<String>,
}

/// What a miner is owed for one phase and currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    /// The miner id.
    pub miner_id: String,
    /// Its wallet.
    pub wallet: String,
    /// The currency.
    pub currency: Currency,
    /// Its balance in the phase (its contribution), micro-points.
    pub contribution_micro: i64,
    /// What it is owed, micro-points.
    pub payout_micro: i64,
}

/// A points ledger. One API for every store; all methods are synchronous.
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use heurist_points::ledger::{BalanceQuery, LedgerStore, NewEntry, NewPhase, PhaseEmission, SqliteLedger};
/// use heurist_points::{Currency, Points};
///
/// let mut ledger = SqliteLedger::open_in_memory()?;
/// ledger.open_phase(&NewPhase { id: "p1".into(), opened_at_ms: 0, emission: PhaseEmission::default() })?;
/// ledger.append(&[NewEntry::Credit {
///     job_id: "job-1".into(),
///     miner_id: "0xabc-1".into(),
///     points: Points::from_micro(Currency::Waifu, 2_500_000),
/// }])?;
/// // A job is credited once.
/// assert!(ledger.credit("job-1", "0xabc-1", Points::from_micro(Currency::Waifu, 1)).is_err());
/// let wallets = ledger.balances(&BalanceQuery::wallets())?;
/// assert_eq!((wallets[0].owner.as_str(), wallets[0].total_micro), ("0xabc", 2_500_000));
/// # }
/// # Ok::<(), heurist_points::PointsError>(())
/// ```
pub trait LedgerStore {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Opens a phase. Refused while another is open, or if the id was used.
    fn open_phase(&mut self, phase: &NewPhase) -> Result<Phase>;

    /// Closes the open phase `id`.
    fn close_phase(&mut self, id: &str, closed_at_ms: i64) -> Result<Phase>;

    /// The open phase, if any.
    fn current_phase(&mut self) -> Result<Option<Phase>>;

    /// Every phase, oldest first.
    fn phases(&mut self) -> Result<Vec<Phase>>;

    /// Appends a batch of entries to the open phase, in one transaction: all are written or
    /// none is. A duplicate credit anywhere in the batch refuses the whole batch with
    /// [`PointsError::DuplicateCredit`].
    fn append(&mut self, entries: &[NewEntry]) -> Result<Receipt>;

    /// Reads entries in id order.
    fn entries(&mut self, query: &EntryQuery) -> Result<Vec<Entry>>;

    /// Reads balances, ordered by owner then currency.
    fn balances(&mut self, query: &BalanceQuery) -> Result<Vec<Balance>>;

    /// Credits one job; returns the entry id.
    fn credit(&mut self, job_id: &str, miner_id: &str, points: Points) -> Result<i64> {
        let receipt = self.append(&[NewEntry::Credit {
            job_id: job_id.to_owned(),
            miner_id: miner_id.to_owned(),
            points,
        }])?;
        Ok(receipt.entry_ids.first().copied().unwrap_or_default())
    }

    /// One miner's total in one currency, in one phase or over all.
    fn balance_of(&mut self, miner_id: &str, currency: Currency, phase: Option<&str>) -> Result<i64> {
        let query = BalanceQuery {
            phase: phase.map(str::to_owned),
            currency: Some(currency),
            miner_id: Some(miner_id.to_owned()),
            ..BalanceQuery::default()
        };
        Ok(self.balances(&query)?.first().map_or(0, |b| b.total_micro))
    }

    /// What each miner is owed for a phase and currency: with a fixed emission, the
    /// emission shared pro rata by balance (negative balances count as 0; the
    /// largest-remainder method makes the shares add up to the emission exactly, ties going
    /// to the smaller miner id); without, the balances themselves (negative ones as 0).
    fn payouts(&mut self, phase_id: &str, currency: Currency) -> Result<Vec<Payout>> {
        let phase = self
            .phases()?
            .into_iter()
            .find(|p| p.id == phase_id)
            .ok_or_else(|| PointsError::UnknownPhase { id: phase_id.to_owned(), expected: "known" })?;
        let balances = self.balances(&BalanceQuery::miners().in_phase(phase_id).currency(currency))?;
        Ok(emission::pro_rata(&balances, phase.emission.of(currency)))
    }

    /// Appends boost adjustments for the open phase's balances, as chosen by
    /// [`crate::boost::allocate`] for each wallet's boost from `source`. Run it once per
    /// phase, before closing it; a second run is refused with
    /// [`PointsError::DuplicateBoost`].
    fn apply_boosts(&mut self, source: &dyn BoostSource) -> Result<Receipt> {
        let phase = self.current_phase()?.ok_or(PointsError::NoOpenPhase)?;
        let balances = self.balances(&BalanceQuery::miners().in_phase(phase.id))?;
        let entries = boost_entries(&balances, source)?;
        self.append(&entries)
    }
}

/// Opens a ledger from a location: a `postgres://` or `postgresql://` URL (feature
/// `postgres`), or a file path (feature `sqlite`; created if missing).
pub fn open_ledger(location: &str) -> Result<Box<dyn LedgerStore>> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        {
            return Ok(Box::new(PostgresLedger::connect(location)?));
        }
        #[cfg(not(feature = "postgres"))]
        {
            return Err(PointsError::BackendNotCompiled { backend: "postgres", feature: "postgres" });
        }
    }
    if location.is_empty() || location.contains("://") {
        return Err(PointsError::LedgerLocation { location: location.to_owned() });
    }
    #[cfg(feature = "sqlite")]
    {
        Ok(Box::new(SqliteLedger::open(location)?))
    }
    #[cfg(not(feature = "sqlite"))]
    {
        Err(PointsError::BackendNotCompiled { backend: "sqlite", feature: "sqlite" })
    }
}

/// Implements [`LedgerStore`] for a store that implements `sql::Engine`, by the shared logic.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! impl_ledger_store {
    ($ty:ty) => {
        impl $crate::ledger::LedgerStore for $ty {
            fn backend(&self) -> &'static str {
                <$ty as $crate::ledger::sql::Engine>::NAME
            }
            fn open_phase(&mut self, phase: &$crate::ledger::NewPhase) -> $crate::Result<$crate::ledger::Phase> {
                $crate::ledger::sql::open_phase(self, phase)
            }
            fn close_phase(&mut self, id: &str, closed_at_ms: i64) -> $crate::Result<$crate::ledger::Phase> {
                $crate::ledger::sql::close_phase(self, id, closed_at_ms)
            }
            fn current_phase(&mut self) -> $crate::Result<Option<$crate::ledger::Phase>> {
                $crate::ledger::sql::current_phase(self)
            }
            fn phases(&mut self) -> $crate::Result<Vec<$crate::ledger::Phase>> {
                $crate::ledger::sql::phases(self)
            }
            fn append(&mut self, entries: &[$crate::ledger::NewEntry]) -> $crate::Result<$crate::ledger::Receipt> {
                $crate::ledger::sql::append(self, entries)
            }
            fn entries(&mut self, query: &$crate::ledger::EntryQuery) -> $crate::Result<Vec<$crate::ledger::Entry>> {
                $crate::ledger::sql::entries(self, query)
            }
            fn balances(
                &mut self,
                query: &$crate::ledger::BalanceQuery,
            ) -> $crate::Result<Vec<$crate::ledger::Balance>> {
                $crate::ledger::sql::balances(self, query)
            }
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use impl_ledger_store;
