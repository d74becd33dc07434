//! `heurist sign` and `heurist verify-signature`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use heurist_protocol::{Address, ProtocolError, Signature, SignedHour, verify_hourly};

use crate::Outcome;
use crate::wallet::{KeysDir, load, parse_miner_id};

#[derive(Args, Debug)]
pub(crate) struct SignArgs {
    /// The miner id (reward wallet, optionally -tag) to sign for.
    #[arg(long)]
    address: String,
    /// Unix time to sign for (rounded down to the hour) [default: now].
    #[arg(long)]
    time: Option<u64>,
    #[command(flatten)]
    keys: KeysDir,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The miner id (reward wallet, optionally -tag) the submission came from.
    #[arg(long)]
    address: String,
    /// The identity address bound to that reward wallet.
    #[arg(long)]
    identity: String,
    /// The signature, hex of r|s|v with or without 0x.
    #[arg(long)]
    signature: String,
    /// Unix time of the check; the signature must be for its hour or the previous one.
    #[arg(long)]
    time: u64,
}

fn now() -> anyhow::Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs())
}

#[allow(clippy::print_stdout)]
pub(crate) fn run_sign(args: SignArgs) -> anyhow::Result<Outcome> {
    let id = parse_miner_id(&args.address)?;
    let dir = args.keys.resolve()?;
    let (wallet, _) = load(&dir, &id)?;
    let time = match args.time {
        Some(t) => t,
        None => now()?,
    };
    println!("{}", wallet.sign_hourly(&id, time)?);
    Ok(Outcome::Ok)
}

#[allow(clippy::print_stdout)]
pub(crate) fn run_verify(args: VerifyArgs) -> anyhow::Result<Outcome> {
    let id = parse_miner_id(&args.address)?;
    let identity = Address::parse(&args.identity).with_context(|| format!("--identity {:?}", args.identity))?;
    let signature = Signature::parse(&args.signature).context("--signature")?;
    match verify_hourly(&id, &identity, &signature, args.time) {
        Ok(SignedHour::Current) => {
            println!("valid: signed by {identity} for the hour of {}", args.time);
            Ok(Outcome::Ok)
        }
        Ok(SignedHour::Previous) => {
            println!("valid: signed by {identity} for the hour before {}", args.time);
            Ok(Outcome::Ok)
        }
        Err(e @ (ProtocolError::SignerMismatch { .. } | ProtocolError::SignatureRecovery { .. })) => {
            println!("invalid: {e}");
            Ok(Outcome::Rejected)
        }
        Err(e) => Err(e.into()),
    }
}
