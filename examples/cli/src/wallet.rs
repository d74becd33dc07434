//! `heurist wallet new|show|restore`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use heurist_protocol::{IdentityWallet, MinerId, key_file_path};

use crate::Outcome;

#[derive(Subcommand, Debug)]
pub(crate) enum WalletCommand {
    /// Make a new identity wallet (12 English words). With --address, store it as the
    /// reference does, in <keys>/<reward address>.txt.
    New {
        /// The reward wallet (miner id, with or without -tag) this identity signs for.
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        keys: KeysDir,
        /// Overwrite an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Show the identity address stored for a reward wallet.
    Show {
        /// The reward wallet (miner id, with or without -tag).
        #[arg(long)]
        address: String,
        #[command(flatten)]
        keys: KeysDir,
        /// Also print the seed phrase.
        #[arg(long)]
        show_phrase: bool,
    },
    /// Restore an identity wallet from its words, read from standard input, and store it.
    Restore {
        /// The reward wallet (miner id, with or without -tag) this identity signs for.
        #[arg(long)]
        address: String,
        #[command(flatten)]
        keys: KeysDir,
        /// Overwrite an existing key file.
        #[arg(long)]
        force: bool,
    },
}

/// The folder holding identity key files.
#[derive(Args, Debug, Clone)]
pub(crate) struct KeysDir {
    /// Folder of identity key files [default: ~/.heurist-keys].
    #[arg(long = "keys", env = "HEURIST_KEYS_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl KeysDir {
    pub(crate) fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.dir {
            Some(d) => Ok(d.clone()),
            None => heurist_protocol::default_keys_dir().context("no home directory: pass --keys DIR"),
        }
    }
}

pub(crate) fn parse_miner_id(s: &str) -> anyhow::Result<MinerId> {
    s.parse::<MinerId>().with_context(|| format!("--address {s:?}"))
}

/// Loads the identity for `id`, warning on standard error when its key file was readable or
/// writable by group or others (and so was set to 0600, or could not be).
pub(crate) fn load(dir: &Path, id: &MinerId) -> anyhow::Result<(IdentityWallet, PathBuf)> {
    let loaded = IdentityWallet::load_for(dir, id)?;
    if let Some(w) = loaded.warning() {
        eprintln!("warning: {w}");
    }
    Ok((loaded.wallet, loaded.path))
}

pub(crate) fn run(cmd: WalletCommand) -> anyhow::Result<Outcome> {
    match cmd {
        WalletCommand::New { address, keys, force } => {
            let wallet = IdentityWallet::generate()?;
            let file = match address {
                Some(a) => Some(store(&wallet, &parse_miner_id(&a)?, &keys, force)?),
                None => None,
            };
            print_wallet(&wallet, file, true);
        }
        WalletCommand::Show { address, keys, show_phrase } => {
            let id = parse_miner_id(&address)?;
            let dir = keys.resolve()?;
            let (wallet, path) = load(&dir, &id)?;
            print_wallet(&wallet, Some(path), show_phrase);
        }
        WalletCommand::Restore { address, keys, force } => {
            let id = parse_miner_id(&address)?;
            let mut words = String::new();
            std::io::stdin().read_to_string(&mut words).context("reading the seed phrase from standard input")?;
            let wallet = IdentityWallet::from_phrase(&words)?;
            let file = store(&wallet, &id, &keys, force)?;
            print_wallet(&wallet, Some(file), false);
        }
    }
    Ok(Outcome::Ok)
}

fn store(wallet: &IdentityWallet, id: &MinerId, keys: &KeysDir, force: bool) -> anyhow::Result<PathBuf> {
    let path = key_file_path(&keys.resolve()?, id);
    if path.exists() && !force {
        bail!("{} exists: it may hold the key bound to this reward wallet; pass --force to overwrite", path.display());
    }
    wallet.write_key_file(&path)?;
    Ok(path)
}

#[allow(clippy::print_stdout)]
fn print_wallet(wallet: &IdentityWallet, file: Option<PathBuf>, phrase: bool) {
    println!("Identity Wallet Address: {}", wallet.address());
    if phrase {
        println!("Seed Phrase: {}", wallet.phrase());
    }
    if let Some(f) = file {
        println!("Wallet File: {}", f.display());
    }
    if phrase {
        eprintln!(
            "Back up the seed phrase. The identity wallet is for signing only: never deposit funds into it."
        );
    }
}
