//! `heurist`: the command-line tool for Heurist operators and third parties.
//!
//! Identity wallets and hourly signatures (`wallet`, `sign`, `verify-signature`), job checks
//! (`job check`), the model registry (`registry`). Each subcommand is a thin layer over the
//! library crates; what a test wants to check lives there, not here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod job;
mod registry;
mod sign;
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
    /// Print the model registry as a table.
    Registry(registry::RegistryArgs),
}

/// What a subcommand's run ended with, when it did not fail outright.
pub(crate) enum Outcome {
    /// Success: exit 0.
    Ok,
    /// A check that ran and said no: exit 1.
    Rejected,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Rejected) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Wallet(c) => wallet::run(c),
        Command::Sign(a) => sign::run_sign(a),
        Command::VerifySignature(a) => sign::run_verify(a),
        Command::Job(c) => job::run(c),
        Command::Registry(a) => registry::run(a),
    }
}
