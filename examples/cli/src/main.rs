//! `heurist`: the command-line tool for Heurist operators and third parties.
//!
//! Identity wallets and hourly signatures (`wallet`, `sign`, `verify-signature`), job checks
//! (`job check`), image jobs on a local checkpoint (`generate`), the model registry
//! (`registry`), reward rules and ledgers (`points`, `ledger`), file checksums (`checksum`),
//! chat answers on a local model (`chat`) and chat results re-checked on a model (`verify`).
//! Each subcommand is a thin layer over the library crates; what a test wants to check lives
//! there, not here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod chat;
mod checksum;
mod generate;
mod job;
mod points;
mod registry;
mod sign;
mod verify;
mod wallet;

/// Tools for Heurist miners, sequencers and reward services.
#[derive(Parser, Debug)]
#[command(name = "heurist", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, show or restore an identity wallet (the key that signs submissions).
    #[command(subcommand)]
    Wallet(wallet::WalletCommand),
    /// Print the hourly submission signature for a miner id (hex of r|s|v, no 0x).
    Sign(sign::SignArgs),
    /// Check a submission signature: exit 0 when it holds, 1 when it does not.
    VerifySignature(sign::VerifyArgs),
    /// Work with job JSON.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Run a text-to-image job on a local SD 1.5 / SDXL checkpoint and write the PNG.
    Generate(generate::GenerateArgs),
    /// Print the model registry as a table.
    Registry(registry::RegistryArgs),
    /// Print the points of one finished-job record as JSON {"currency", "points"}.
    Points(points::PointsArgs),
    /// Show balances, phases or entries of a points ledger (SQLite file or postgres:// URL).
    Ledger(points::LedgerArgs),
    /// Print a file's SHA-256; with --expect, exit 1 when it differs.
    Checksum(checksum::ChecksumArgs),
    /// Answer an OpenAI messages array on a local chat model: print the ChatCompletion JSON, or stream the text.
    Chat(chat::ChatArgs),
    /// Re-check a chat or image result on the model: exit 0 when it holds, 1 when it is rejected (with the evidence), 2 when it cannot be judged.
    Verify(verify::VerifyArgs),
}

/// What a subcommand's run ended with, when it did not fail outright.
pub(crate) enum Outcome {
    /// Success: exit 0.
    Ok,
    /// A check that ran and said no: exit 1.
    Rejected,
}

fn main() -> ExitCode {
    // `generate` and image `verify` run UNets on the CPU: keep their buffers warm.
    heurist_inference::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Rejected) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes joined with `: `, leaving out a cause whose text the message
/// before it already shows (several library errors print their cause inline).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Wallet(c) => wallet::run(c),
        Command::Sign(a) => sign::run_sign(a),
        Command::VerifySignature(a) => sign::run_verify(a),
        Command::Job(c) => job::run(c),
        Command::Generate(a) => generate::run(a),
        Command::Registry(a) => registry::run(a),
        Command::Points(a) => points::run_points(a),
        Command::Ledger(a) => points::run_ledger(a),
        Command::Checksum(a) => checksum::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Chat(a) => chat::run(a),
    }
}
