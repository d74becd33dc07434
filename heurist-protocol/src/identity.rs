//! The identity wallet: the secp256k1 key that signs submissions for a reward wallet.
//!
//! It is derived from a 12-word BIP-39 English mnemonic at `m/44'/60'/0'/0/0` (what
//! eth-account's `Account.from_mnemonic` does), and stored as the reference stores it:
//! `~/.heurist-keys/<reward address lower case>.txt` holding two lines,
//! `Seed Phrase: <words>` and `Identity Wallet Address: <address lower case>`, mode 0600 on
//! Unix (a looser file is tightened when written or read, and the read reports it).
//! The key never leaves this type: `Debug` prints the address only.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use alloy_signer::SignerSync;
use alloy_signer_local::{MnemonicBuilder, PrivateKeySigner, coins_bip39::English};

use crate::error::{ProtocolError, Result};
use crate::miner_id::{Address, MinerId};
use crate::signature::{Signature, signing_message};

/// The derivation path of the identity key (Ethereum's first account).
pub const DERIVATION_PATH: &str = "m/44'/60'/0'/0/0";

/// The folder the reference keeps identity key files in, under the home directory.
pub const KEYS_DIR_NAME: &str = ".heurist-keys";

const PHRASE_PREFIX: &str = "Seed Phrase: ";
const ADDRESS_PREFIX: &str = "Identity Wallet Address: ";

/// The mode of a key file: read and write for its owner only.
#[cfg(unix)]
const OWNER_ONLY: u32 = 0o600;

/// A signing identity derived from a mnemonic.
pub struct IdentityWallet {
    phrase: String,
    signer: PrivateKeySigner,
    address: Address,
}

impl IdentityWallet {
    /// Makes a new wallet from 128 bits of OS randomness (12 words).
    pub fn generate() -> Result<Self> {
        let mnemonic = alloy_signer_local::coins_bip39::Mnemonic::<English>::new_with_count(&mut rand::thread_rng(), 12)
            .map_err(|e| ProtocolError::Mnemonic { reason: e.to_string() })?;
        Self::from_phrase(&mnemonic.to_phrase())
    }

    /// Restores the wallet from its words (extra white space is ignored).
    ///
    /// ```
    /// use heurist_protocol::IdentityWallet;
    /// let w = IdentityWallet::from_phrase("test test test test test test test test test test test junk")?;
    /// assert_eq!(w.address().as_str(), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
    /// # Ok::<(), heurist_protocol::ProtocolError>(())
    /// ```
    pub fn from_phrase(words: &str) -> Result<Self> {
        let phrase = words.split_whitespace().collect::<Vec<_>>().join(" ");
        let signer = MnemonicBuilder::<English>::default()
            .phrase(phrase.as_str())
            .derivation_path(DERIVATION_PATH)
            .and_then(|b| b.build())
            .map_err(|e| ProtocolError::Mnemonic { reason: e.to_string() })?;
        let address = Address::from_alloy(signer.address());
        Ok(Self { phrase, signer, address })
    }

    /// The identity address, lower case.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The mnemonic words. Handle with care: they are the key.
    pub fn phrase(&self) -> &str {
        &self.phrase
    }

    /// Signs arbitrary text as an EIP-191 personal message.
    pub fn sign_text(&self, text: &str) -> Result<Signature> {
        let sig = self
            .signer
            .sign_message_sync(text.as_bytes())
            .map_err(|e| ProtocolError::SignatureRecovery { message: text.to_owned(), reason: e.to_string() })?;
        Ok(Signature::from_alloy(&sig))
    }

    /// The submission signature for `miner_id` at `unix_time` (see [`signing_message`]).
    pub fn sign_hourly(&self, miner_id: &MinerId, unix_time: u64) -> Result<Signature> {
        self.sign_text(&signing_message(miner_id, unix_time))
    }

    /// Writes the reference's two-line key file, creating the folder. On Unix the file ends at
    /// mode 0600 even when it existed with a looser mode (`--force`): the mode is set on the
    /// open file before it is emptied and before a word of the phrase goes in, so a failure to
    /// set it leaves the old file as it was.
    pub fn write_key_file(&self, path: &Path) -> Result<()> {
        let io = |error| ProtocolError::Io { path: path.to_owned(), error };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut opts = fs::OpenOptions::new();
        // Emptied below, once the mode is 0600.
        opts.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(OWNER_ONLY);
        }
        let mut f = opts.open(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(OWNER_ONLY)).map_err(io)?;
        }
        f.set_len(0).map_err(io)?;
        write!(f, "{PHRASE_PREFIX}{}\n{ADDRESS_PREFIX}{}\n", self.phrase, self.address).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads a key file and checks that its words derive the address it names.
    ///
    /// On Unix a file that group or others may read or write is set to 0600 before it is read
    /// (on the open file, so the check and the read see the same file); what was found and
    /// done is in [`LoadedIdentity::loose_permissions`], for the caller to report.
    pub fn read_key_file(path: &Path) -> Result<LoadedIdentity> {
        let bad = |reason: String| ProtocolError::KeyFile { path: path.to_owned(), reason };
        let io = |error| ProtocolError::Io { path: path.to_owned(), error };
        let mut file = fs::File::open(path).map_err(io)?;
        let loose_permissions = tighten(&file).map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let phrase = lines
            .next()
            .and_then(|l| l.strip_prefix(PHRASE_PREFIX))
            .ok_or_else(|| bad(format!("first line must start with {PHRASE_PREFIX:?}")))?;
        let named = lines
            .next()
            .and_then(|l| l.strip_prefix(ADDRESS_PREFIX))
            .ok_or_else(|| bad(format!("second line must start with {ADDRESS_PREFIX:?}")))?;
        let named = Address::parse(named.trim()).map_err(|e| bad(e.to_string()))?;
        let wallet = Self::from_phrase(phrase).map_err(|e| bad(e.to_string()))?;
        if wallet.address != named {
            return Err(bad(format!(
                "the seed phrase derives {} but the file names {named}",
                wallet.address
            )));
        }
        Ok(LoadedIdentity { wallet, path: path.to_owned(), loose_permissions })
    }

    /// Loads the identity for `miner_id` from `keys_dir`: `<reward address>.txt`, or, as the
    /// reference's generator writes it, `<miner id lower case>.txt`.
    /// Permissions are checked and tightened as [`read_key_file`](Self::read_key_file) does.
    pub fn load_for(keys_dir: &Path, miner_id: &MinerId) -> Result<LoadedIdentity> {
        let primary = key_file_path(keys_dir, miner_id);
        if primary.exists() {
            return Self::read_key_file(&primary);
        }
        let tagged = keys_dir.join(format!("{}.txt", miner_id.to_string().to_lowercase()));
        if tagged.exists() {
            return Self::read_key_file(&tagged);
        }
        Err(ProtocolError::KeyFile {
            path: primary,
            reason: "no identity key file; create one with `heurist wallet new --address <reward address>`".into(),
        })
    }
}

impl std::fmt::Debug for IdentityWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityWallet").field("address", &self.address).finish_non_exhaustive()
    }
}

/// An identity read from its key file, with what the read found wrong with the file's mode.
#[derive(Debug)]
#[must_use = "a key file that others could read must be reported: see `warning`"]
pub struct LoadedIdentity {
    /// The identity.
    pub wallet: IdentityWallet,
    /// The key file it was read from.
    pub path: PathBuf,
    /// Set when group or others could read or write the file (Unix only).
    pub loose_permissions: Option<LoosePermissions>,
}

impl LoadedIdentity {
    /// The line to log when the file's mode was loose, naming the file, the mode it had and
    /// whether it is now 0600.
    pub fn warning(&self) -> Option<String> {
        self.loose_permissions.as_ref().map(|l| format!("identity key file {}: {l}", self.path.display()))
    }
}

/// A key file found readable or writable by group or others.
#[derive(Debug)]
pub struct LoosePermissions {
    /// The permission bits it had, e.g. `0o644`.
    pub mode: u32,
    /// `Ok` once the file is 0600; otherwise why its mode could not be changed.
    pub tightened: std::io::Result<()>,
}

impl std::fmt::Display for LoosePermissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mode was {:04o}: group or others could read or change the seed phrase; ", self.mode)?;
        match &self.tightened {
            Ok(()) => f.write_str("set to 0600"),
            Err(e) => write!(f, "could not set it to 0600 ({e}): run chmod 600 on it"),
        }
    }
}

/// Sets an open key file to 0600 when group or others have any access to it.
#[cfg(unix)]
fn tighten(file: &fs::File) -> std::io::Result<Option<LoosePermissions>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    let tightened = file.set_permissions(fs::Permissions::from_mode(OWNER_ONLY));
    Ok(Some(LoosePermissions { mode, tightened }))
}

/// Unix modes only: nothing to check elsewhere.
#[cfg(not(unix))]
fn tighten(_file: &fs::File) -> std::io::Result<Option<LoosePermissions>> {
    Ok(None)
}

/// `<keys_dir>/<reward address lower case>.txt`.
pub fn key_file_path(keys_dir: &Path, miner_id: &MinerId) -> PathBuf {
    keys_dir.join(format!("{}.txt", miner_id.reward_address()))
}

/// `~/.heurist-keys`, from `$HOME` (`None` when no home directory is set).
pub fn default_keys_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(KEYS_DIR_NAME))
}
