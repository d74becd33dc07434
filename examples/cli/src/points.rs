//! `heurist points` and `heurist ledger`: reward rules and balances from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use heurist_points::ledger::{BalanceQuery, EntryQuery};
use heurist_points::{Currency, JobRecord, RuleSet, open_ledger};
use heurist_protocol::Registry;

use crate::Outcome;
use crate::job::read_input;

#[derive(Args, Debug)]
pub(crate) struct PointsArgs {
    /// Reward rules: a preset (`seed`, the default; `later`) or a TOML/JSON rule-set file.
    #[arg(long, default_value = "seed")]
    rules: String,
    /// A finished-job record (JSON: model_id, model_type, width, height, steps, input_tokens,
    /// output_tokens, latency_s, hardware), or - for standard input. `model_type` may be left
    /// out for models the registry knows.
    record: PathBuf,
}

#[allow(clippy::print_stdout)]
pub(crate) fn run_points(args: PointsArgs) -> anyhow::Result<Outcome> {
    let rules = RuleSet::load(&args.rules).with_context(|| format!("--rules {}", args.rules))?;
    let text = String::from_utf8(read_input(&args.record)?).with_context(|| format!("{} is not UTF-8", args.record.display()))?;
    let mut record = JobRecord::from_json_str(&text).with_context(|| args.record.display().to_string())?;
    if record.model_type.is_none() {
        let mut registry = Registry::bundled()?;
        registry.extend(Registry::bundled_2024_07()?);
        record.model_type = registry.get(&record.model_id).ok().map(|e| e.model_type.as_str().to_owned());
    }
    let points = rules.points(&record).with_context(|| format!("points of {}", args.record.display()))?;
    println!("{}", serde_json::to_string(&points)?);
    Ok(Outcome::Ok)
}

#[derive(Args, Debug)]
pub(crate) struct LedgerArgs {
    /// The ledger: a SQLite file or a postgres:// URL.
    #[arg(long, env = "HEURIST_LEDGER")]
    ledger: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    what: LedgerWhat,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum LedgerWhat {
    /// Balances per miner id (or per wallet with --wallets).
    Balances {
        /// Sum the miner ids of each wallet.
        #[arg(long)]
        wallets: bool,
        /// Only this phase.
        #[arg(long)]
        phase: Option<String>,
        /// Only this currency (waifu or llama).
        #[arg(long)]
        currency: Option<String>,
    },
    /// The phases, oldest first.
    Phases,
    /// The last entries (credits, slashes with their reasons, boosts).
    Entries {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only this miner id.
        #[arg(long)]
        miner: Option<String>,
    },
}

#[allow(clippy::print_stdout)]
pub(crate) fn run_ledger(args: LedgerArgs) -> anyhow::Result<Outcome> {
    if !args.ledger.contains("://") && !std::path::Path::new(&args.ledger).exists() {
        anyhow::bail!("--ledger {}: no such file", args.ledger);
    }
    let mut ledger = open_ledger(&args.ledger).with_context(|| format!("--ledger {}", args.ledger))?;
    match args.what {
        LedgerWhat::Balances { wallets, phase, currency } => {
            let mut q = if wallets { BalanceQuery::wallets() } else { BalanceQuery::miners() };
            if let Some(p) = phase {
                q = q.in_phase(p);
            }
            if let Some(c) = currency {
                let c: Currency = c.parse().with_context(|| format!("--currency {c}"))?;
                q = q.currency(c);
            }
            let rows = ledger.balances(&q)?;
            match args.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Table => {
                    let mut t = Table::new();
                    t.load_preset(UTF8_BORDERS_ONLY).set_header(["owner", "currency", "credits", "slashes", "boosts", "total"]);
                    for b in &rows {
                        let p = |m: i64| format!("{:.6}", m as f64 / 1e6);
                        t.add_row([b.owner.clone(), b.currency.to_string(), p(b.credits_micro), p(b.slashes_micro), p(b.boosts_micro), p(b.total_micro)]);
                    }
                    println!("{t}");
                }
            }
        }
        LedgerWhat::Phases => {
            let phases = ledger.phases()?;
            println!("{}", serde_json::to_string_pretty(&phases)?);
        }
        LedgerWhat::Entries { limit, miner } => {
            let mut entries = ledger.entries(&EntryQuery { miner_id: miner, ..EntryQuery::default() })?;
            let skip = entries.len().saturating_sub(limit as usize);
            entries.drain(..skip);
            println!("{}", serde_json::to_string_pretty(&entries)?);
        }
    }
    Ok(Outcome::Ok)
}
