//! Who signed a submission, and whether that is the identity bound to the reward wallet.
//!
//! A submission (`miner_submit`) carries the miner id (reward address plus tag), the identity
//! address that claims to have signed, and an EIP-191 signature of
//! `"<reward address>-<hour>"` (see `heurist_protocol::signing_message`). It holds when all
//! three agree: the identity bound to the reward address (an on-chain contract in production,
//! an [`IdentityBinding`]) is the one the submission names, and the signature recovers to it
//! for the hour of the check or the hour before (a job may straddle the hour). The claimed
//! identity is never trusted on its own: anyone can sign with a fresh key.

use std::collections::HashMap;
use std::path::Path;

use heurist_protocol::{Address, MinerSubmit, ProtocolError, SignedHour, hour_of, verify_hourly};

use crate::error::{Result, VerifyError};

/// Where the reward wallet → identity wallet binding comes from.
///
/// Production reads the identity contract (`identityAddress(address)`, the zero address
/// meaning "not bound"); tests and local networks use [`StaticBindings`]. An implementation
/// that cannot answer returns [`VerifyError::BindingLookup`] with its own error as the source.
pub trait IdentityBinding {
    /// The identity bound to `reward_address`, or `None` when none is. A `Some` of the zero
    /// address is read as "not bound" too, as the contract answers.
    fn identity_of(&self, reward_address: &Address) -> Result<Option<Address>>;
}

/// A fixed table of bindings, e.g. read from a file for a local sequencer.
///
/// ```
/// use heurist_protocol::Address;
/// use heurist_verify::{IdentityBinding, StaticBindings};
/// let table = StaticBindings::from_json_str(
///     r#"{"0x3F71F00AD1266BE038917ADDD150943CA7C60F6A": "0xb0a160faec1705618a7583e2cc1c12e72d259ac3"}"#,
/// )?;
/// let reward = Address::parse("0x3f71f00ad1266be038917addd150943ca7c60f6a")?;
/// assert_eq!(table.identity_of(&reward)?.map(|a| a.to_string()).as_deref(),
///            Some("0xb0a160faec1705618a7583e2cc1c12e72d259ac3"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticBindings {
    table: HashMap<Address, Address>,
}

impl StaticBindings {
    /// An empty table: every reward address is unbound.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `identity` to `reward_address`, returning the identity bound before, if any.
    pub fn bind(&mut self, reward_address: Address, identity: Address) -> Option<Address> {
        self.table.insert(reward_address, identity)
    }

    /// Removes the binding of `reward_address`, returning it.
    pub fn unbind(&mut self, reward_address: &Address) -> Option<Address> {
        self.table.remove(reward_address)
    }

    /// How many reward addresses are bound.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no reward address is bound.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Parses a JSON object mapping reward address to identity address (any case).
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::parse(Path::new("<json>"), text, Format::Json)
    }

    /// Parses a TOML table mapping reward address to identity address (keys quoted, any case).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::parse(Path::new("<toml>"), text, Format::Toml)
    }

    /// Reads a table file: TOML when its name ends in `.toml`, JSON otherwise.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| VerifyError::BindingsFile { path: path.to_owned(), reason: format!("cannot read: {e}") })?;
        let format =
            if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) { Format::Toml } else { Format::Json };
        Self::parse(path, &text, format)
    }

    fn parse(path: &Path, text: &str, format: Format) -> Result<Self> {
        let err = |reason: String| VerifyError::BindingsFile { path: path.to_owned(), reason };
        // Decoded as strings first so that a bad address is reported with its key.
        let raw: HashMap<String, String> = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| err(e.to_string()))?,
            Format::Toml => toml::from_str(text).map_err(|e| err(e.to_string()))?,
        };
        let mut table = HashMap::with_capacity(raw.len());
        for (reward, identity) in raw {
            let r = Address::parse(&reward).map_err(|e| err(format!("key {reward:?}: {e}")))?;
            let i = Address::parse(&identity).map_err(|e| err(format!("value of {reward:?}: {e}")))?;
            if table.insert(r, i).is_some() {
                return Err(err(format!("reward address {reward:?} is listed twice (in another case)")));
            }
        }
        Ok(Self { table })
    }
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Toml,
}

impl FromIterator<(Address, Address)> for StaticBindings {
    fn from_iter<I: IntoIterator<Item = (Address, Address)>>(iter: I) -> Self {
        Self { table: iter.into_iter().collect() }
    }
}

impl IdentityBinding for StaticBindings {
    fn identity_of(&self, reward_address: &Address) -> Result<Option<Address>> {
        Ok(self.table.get(reward_address).cloned())
    }
}

/// A submission whose signature holds, with the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureVerdict {
    /// The reward address of the miner id (lower case).
    pub reward_address: Address,
    /// The bound identity that signed.
    pub identity: Address,
    /// Whether it signed the hour of the check or the hour before.
    pub signed_hour: SignedHour,
    /// The start of the hour that was signed (unix seconds).
    pub hour_start_unix: u64,
}

/// Checks that `submit` is signed by the identity bound to its reward address, for the hour
/// of `now_unix` or the hour before.
///
/// Errors: [`VerifyError::NotBound`], [`VerifyError::BoundToOther`] (the submission names
/// another identity), [`VerifyError::SignatureMismatch`] (signed by another key, or for
/// another hour), [`VerifyError::MalformedSignature`] (recovers no key),
/// [`VerifyError::BindingLookup`] (the binding could not be read).
///
/// ```
/// use heurist_protocol::{IdentityWallet, MinerId, MinerSubmit, SignedHour};
/// use heurist_verify::{StaticBindings, verify_submission};
///
/// let wallet = IdentityWallet::from_phrase("test test test test test test test test test test test junk")?;
/// let miner: MinerId = "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0".parse()?;
/// let now = 1717302345;
/// let body = serde_json::json!({
///     "miner_id": miner, "job_id": "job-1", "result": {"Text": "[]"},
///     "request_latency": 0.1, "inference_latency": 1.0,
///     "signature": wallet.sign_hourly(&miner, now)?, "identity_address": wallet.address(),
/// });
/// let submit = MinerSubmit::from_slice(body.to_string().as_bytes())?;
///
/// let mut bindings = StaticBindings::new();
/// bindings.bind(heurist_protocol::Address::parse(miner.reward_address())?, wallet.address().clone());
/// let verdict = verify_submission(&submit, &bindings, now + 3600)?;
/// assert_eq!(verdict.signed_hour, SignedHour::Previous);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify_submission(
    submit: &MinerSubmit,
    binding: &dyn IdentityBinding,
    now_unix: u64,
) -> Result<SignatureVerdict> {
    let reward = submit.miner_id.reward_address();
    // A MinerId's reward address is always a well-formed address; kept as a typed error anyway.
    let reward_address =
        Address::parse(reward).map_err(|source| VerifyError::MalformedSubmit { source: Box::new(source) })?;
    let bound = match binding.identity_of(&reward_address)? {
        Some(a) if !a.is_zero() => a,
        _ => return Err(VerifyError::NotBound { reward_address: reward.to_owned() }),
    };
    if bound != submit.identity_address {
        return Err(VerifyError::BoundToOther {
            reward_address: reward.to_owned(),
            bound: bound.to_string(),
            claimed: submit.identity_address.to_string(),
        });
    }
    let signed_hour = verify_hourly(&submit.miner_id, &bound, &submit.signature, now_unix).map_err(|source| {
        let miner_id = submit.miner_id.to_string();
        match source {
            ProtocolError::SignatureRecovery { .. } => {
                VerifyError::MalformedSignature { miner_id, source: Box::new(source) }
            }
            _ => VerifyError::SignatureMismatch {
                miner_id,
                identity: bound.to_string(),
                unix_time: now_unix,
                source: Box::new(source),
            },
        }
    })?;
    let hour_start_unix = match signed_hour {
        SignedHour::Current => hour_of(now_unix),
        SignedHour::Previous => hour_of(now_unix).saturating_sub(heurist_protocol::SIGNING_PERIOD_SECS),
    };
    Ok(SignatureVerdict { reward_address, identity: bound, signed_hour, hour_start_unix })
}

/// Decodes a `miner_submit` body and checks its signature ([`verify_submission`]); a body that
/// does not decode (bad JSON, a malformed signature or address) is
/// [`VerifyError::MalformedSubmit`] naming the field.
pub fn verify_submission_json(body: &[u8], binding: &dyn IdentityBinding, now_unix: u64) -> Result<SignatureVerdict> {
    let submit =
        MinerSubmit::from_slice(body).map_err(|source| VerifyError::MalformedSubmit { source: Box::new(source) })?;
    verify_submission(&submit, binding, now_unix)
}
