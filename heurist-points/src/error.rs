//! The one error type of this crate, [`PointsError`], and its [`Result`] alias.
//!
//! Every variant carries the value at fault (a model id, a GPU name, a job id, a rule-set
//! path) and, for rule-set errors read from a file, the 1-based line where the offending
//! item sits, so that a reward operator can fix the file without guessing.

use std::path::PathBuf;

use crate::currency::Currency;
use crate::decimal::Decimal;

/// The result type of every fallible function in this crate.
pub type Result<T, E = PointsError> = std::result::Result<T, E>;

/// Everything that can go wrong computing points or keeping the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PointsError {
    // ---------------------------------------------------------------- rule sets
    /// A TOML rule set (or GPU catalogue) that does not parse or does not have the expected shape.
    #[error("rule set (TOML) line {}: {source}", fmt_line(*.line))]
    RuleToml {
        /// The 1-based line of the error, where the parser knows it.
        line: Option<usize>,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// A JSON rule set that does not parse or does not have the expected shape.
    #[error("rule set (JSON) line {line}: {source}")]
    RuleJson {
        /// The 1-based line of the error.
        line: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A rule set refers to an image category that it does not define.
    #[error("rule set line {}: unknown image category {name:?} at {path}; define it under [waifu.categories]", fmt_line(*.line))]
    UnknownCategory {
        /// The category name as written.
        name: String,
        /// Where the reference sits (a dotted path such as `waifu.types.sd15`).
        path: String,
        /// The 1-based line, when the rule set came from text.
        line: Option<usize>,
    },
    /// A multiplier (category, model, tier, latency factor, share) below zero.
    #[error("rule set line {}: {path} = {value} is negative; multipliers are 0 or more", fmt_line(*.line))]
    NegativeMultiplier {
        /// The dotted path of the multiplier.
        path: String,
        /// The value as read.
        value: Decimal,
        /// The 1-based line, when the rule set came from text.
        line: Option<usize>,
    },
    /// Two NFT tiers that both cover some NFT count.
    #[error("rule set line {}: NFT tier {second} overlaps tier {first}; each NFT count must fall in one tier", fmt_line(*.line))]
    OverlappingTiers {
        /// The earlier tier's range, e.g. `1..=3`.
        first: String,
        /// The later tier's range.
        second: String,
        /// The dotted path of the later tier (`boost.nft_tiers.N`).
        path: String,
        /// The 1-based line of the later tier, when the rule set came from text.
        line: Option<usize>,
    },
    /// Any other value a rule set may not hold (a zero unit, an unordered latency curve...).
    #[error("rule set line {}: {path} = {value}: expected {expected}", fmt_line(*.line))]
    InvalidRule {
        /// The dotted path of the value.
        path: String,
        /// The value as read.
        value: String,
        /// What the value must be.
        expected: &'static str,
        /// The 1-based line, when the rule set came from text.
        line: Option<usize>,
    },
    /// A decimal number with more than six fractional digits, or not a number at all.
    #[error("decimal {value:?}: expected a finite number with at most 6 fractional digits")]
    InvalidDecimal {
        /// The text as read.
        value: String,
    },
    /// A preset name that does not exist.
    #[error("rule-set preset {name:?} is unknown; the presets are {known:?}, or give a .toml or .json file")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The preset names that exist.
        known: &'static [&'static str],
    },
    /// A rule-set file that could not be read.
    #[error("rule set {}: {source}", path.display())]
    RuleFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A rule-set file whose extension says neither TOML nor JSON.
    #[error("rule set {}: unknown extension; name it *.toml or *.json", path.display())]
    RuleFileExtension {
        /// The file.
        path: PathBuf,
    },

    // ---------------------------------------------------------------- jobs
    /// A job record that is not JSON of the record's shape.
    #[error("job record (JSON) line {line}: {source}")]
    RecordJson {
        /// The 1-based line of the error.
        line: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A job whose model the rule set cannot classify (no type given, none known for the id).
    #[error("model {model_id:?} is not rewarded by rule set {rules:?}: give its registry type, or add it to the rule set")]
    UnknownModel {
        /// The model id of the job.
        model_id: String,
        /// The rule set's name.
        rules: String,
    },
    /// A job whose registry type maps to no category or LLM rule.
    #[error("model type {model_type:?} (model {model_id:?}) maps to no category in rule set {rules:?}")]
    UnknownModelType {
        /// The registry type.
        model_type: String,
        /// The model id of the job.
        model_id: String,
        /// The rule set's name.
        rules: String,
    },
    /// A job record with a value out of range (a negative or non-finite latency...).
    #[error("job record: {field} = {value}: expected {expected}")]
    InvalidJob {
        /// The record field.
        field: &'static str,
        /// The value as read.
        value: String,
        /// What the field must hold.
        expected: &'static str,
    },
    /// A computation whose intermediate value does not fit (absurd sizes or token counts).
    #[error("points of {what} overflow: the job's numbers are out of any real range")]
    Overflow {
        /// What was being computed.
        what: String,
    },

    // ---------------------------------------------------------------- GPUs
    /// A GPU name that the catalogue does not know. Never guessed.
    #[error("unknown GPU {name:?}: not in the GPU catalogue (laptop parts and unlisted cards are not guessed); add it to the catalogue")]
    UnknownGpu {
        /// The name as given.
        name: String,
    },
    /// A GPU below the category's minimum GPU or the model's VRAM.
    #[error("GPU {gpu:?} is not eligible for {target}: needs {requirement}")]
    IneligibleGpu {
        /// The catalogue name of the GPU.
        gpu: String,
        /// The category or model.
        target: String,
        /// The requirement it misses.
        requirement: String,
    },
    /// A GPU catalogue whose content is inconsistent (a name used twice...).
    #[error("GPU catalogue: {name:?}: {problem}")]
    InvalidCatalogue {
        /// The GPU entry at fault.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },

    // ---------------------------------------------------------------- ledger
    /// A job credited a second time. The whole batch is refused.
    #[error("job {job_id:?} is already credited; a job is credited at most once")]
    DuplicateCredit {
        /// The job id.
        job_id: String,
    },
    /// A job slashed a second time.
    #[error("job {job_id:?} is already slashed")]
    DuplicateSlash {
        /// The job id.
        job_id: String,
    },
    /// A boost adjustment for a miner, currency and phase that already has one.
    #[error("miner {miner_id:?} already has a {currency} boost adjustment in phase {phase:?}")]
    DuplicateBoost {
        /// The miner id.
        miner_id: String,
        /// The currency.
        currency: Currency,
        /// The phase.
        phase: String,
    },
    /// A slash of a job that was never credited.
    #[error("job {job_id:?} has no credit to slash")]
    UnknownJob {
        /// The job id.
        job_id: String,
    },
    /// An append while no phase is open.
    #[error("no phase is open; open one before appending entries")]
    NoOpenPhase,
    /// Opening a phase while another is open.
    #[error("phase {open:?} is still open; close it before opening {requested:?}")]
    PhaseAlreadyOpen {
        /// The phase that is open.
        open: String,
        /// The phase asked for.
        requested: String,
    },
    /// Opening a phase id that the ledger already has.
    #[error("phase {id:?} already exists in this ledger")]
    DuplicatePhase {
        /// The phase id.
        id: String,
    },
    /// A phase id the ledger does not have, or a close of a phase that is not open.
    #[error("phase {id:?} is not {expected} in this ledger")]
    UnknownPhase {
        /// The phase id.
        id: String,
        /// `"known"` or `"open"`.
        expected: &'static str,
    },
    /// A new entry with a value it may not hold.
    #[error("ledger entry: {field} = {value}: expected {expected}")]
    InvalidEntry {
        /// The entry field.
        field: &'static str,
        /// The value given.
        value: String,
        /// What the field must hold.
        expected: &'static str,
    },
    /// A stored row that this version cannot read (a newer schema, a hand edit).
    #[error("ledger row: {what}: {value:?} is not understood by this version")]
    CorruptLedger {
        /// What was read.
        what: &'static str,
        /// The value stored.
        value: String,
    },
    /// A ledger location that is neither a `postgres://` URL nor a file path.
    #[error("ledger {location:?}: expected a file path (SQLite) or a postgres:// URL")]
    LedgerLocation {
        /// The location as given.
        location: String,
    },
    /// A backend asked for at run time whose cargo feature was not compiled in.
    #[error("ledger backend {backend} is not compiled in; rebuild with --features {feature}")]
    BackendNotCompiled {
        /// The backend.
        backend: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// An error from SQLite.
    #[cfg(feature = "sqlite")]
    #[error("sqlite ledger {location}: {source}")]
    Sqlite {
        /// The database file.
        location: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// An error from PostgreSQL.
    #[cfg(feature = "postgres")]
    #[error("postgres ledger: {source}")]
    Postgres {
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
}

fn fmt_line(line: Option<usize>) -> String {
    match line {
        Some(l) => l.to_string(),
        None => "?".to_owned(),
    }
}

impl PointsError {
    /// The 1-based line of a rule-set error read from text, if it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::RuleToml { line, .. }
            | Self::UnknownCategory { line, .. }
            | Self::NegativeMultiplier { line, .. }
            | Self::OverlappingTiers { line, .. }
            | Self::InvalidRule { line, .. } => *line,
            Self::RuleJson { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// Sets the line of a rule-set error that has none yet.
    pub(crate) fn with_line(mut self, found: Option<usize>) -> Self {
        match &mut self {
            Self::UnknownCategory { line, .. }
            | Self::NegativeMultiplier { line, .. }
            | Self::OverlappingTiers { line, .. }
            | Self::InvalidRule { line, .. }
                if line.is_none() =>
            {
                *line = found;
            }
            _ => {}
        }
        self
    }
}
