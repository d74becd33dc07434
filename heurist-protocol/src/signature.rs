//! The hourly submission signature: EIP-191 `personal_sign` of
//! `"<reward address lower case>-<unix time rounded down to the hour>"` by the identity key.
//!
//! On the wire a signature is the hex of r‖s‖v (65 bytes, v = 27 or 28). The reference sends
//! it without `0x` today and with `0x` in older versions: [`Signature`] accepts both and sends
//! none. A verifier recovers the signer and compares it with the identity bound to the reward
//! wallet, for the current hour or the previous one (a job can straddle the hour).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ProtocolError, Result};
use crate::miner_id::{Address, MinerId};

/// Seconds in one signing period.
pub const SIGNING_PERIOD_SECS: u64 = 3600;

/// The start of the hour holding `unix_time`.
pub fn hour_of(unix_time: u64) -> u64 {
    unix_time - unix_time % SIGNING_PERIOD_SECS
}

/// The text that is signed for `miner_id` at `unix_time`: the reward address, lower case,
/// without the tag, a dash, and the start of the hour.
///
/// ```
/// use heurist_protocol::{signing_message, MinerId};
/// let id: MinerId = "0xABCDEF0123456789abcdef0123456789abcdef01-gpu0".parse()?;
/// assert_eq!(signing_message(&id, 1717302345), "0xabcdef0123456789abcdef0123456789abcdef01-1717300800");
/// # Ok::<(), heurist_protocol::ProtocolError>(())
/// ```
pub fn signing_message(miner_id: &MinerId, unix_time: u64) -> String {
    format!("{}-{}", miner_id.reward_address(), hour_of(unix_time))
}

/// A 65-byte r‖s‖v signature with v = 27 or 28.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; 65]);

impl Signature {
    /// Parses hex with or without `0x`. v may be 27/28 or 0/1 (kept as 27/28).
    pub fn parse(value: &str) -> Result<Self> {
        let err = |reason: String| ProtocolError::SignatureFormat { value: value.chars().take(140).collect(), reason };
        let hex = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")).unwrap_or(value);
        if hex.len() != 130 {
            return Err(err(format!("{} hex digits, expected 130 (65 bytes r|s|v)", hex.len())));
        }
        let mut bytes = [0u8; 65];
        hex::decode_to_slice(hex, &mut bytes).map_err(|e| err(format!("not hex: {e}")))?;
        Self::from_bytes(bytes).map_err(err)
    }

    /// Takes 65 raw bytes r‖s‖v.
    pub fn from_bytes(mut bytes: [u8; 65]) -> std::result::Result<Self, String> {
        match bytes[64] {
            27 | 28 => {}
            0 | 1 => bytes[64] += 27,
            v => return Err(format!("v = {v}, expected 27 or 28")),
        }
        Ok(Self(bytes))
    }

    /// The 65 bytes r‖s‖v, v = 27 or 28.
    pub fn as_bytes(&self) -> &[u8; 65] {
        &self.0
    }

    /// Hex without `0x`, as the reference sends it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Recovers the address that signed `message` (EIP-191 personal message).
    pub fn recover(&self, message: &str) -> Result<Address> {
        let recovery = |reason: String| ProtocolError::SignatureRecovery { message: message.to_owned(), reason };
        let sig = alloy_primitives::Signature::from_raw_array(&self.0).map_err(|e| recovery(e.to_string()))?;
        let addr = sig.recover_address_from_msg(message.as_bytes()).map_err(|e| recovery(e.to_string()))?;
        Ok(Address::from_alloy(addr))
    }

    pub(crate) fn from_alloy(sig: &alloy_primitives::Signature) -> Self {
        // alloy's `as_bytes` writes v as 27 + parity, the form the protocol sends.
        Self(sig.as_bytes())
    }
}

/// Which signing period a verified signature belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedHour {
    /// The hour holding the check time.
    Current,
    /// The hour before it (a job that straddled the hour).
    Previous,
}

/// Checks that `signature` is `identity`'s signature of `miner_id`'s message for the hour of
/// `now` or the hour before.
///
/// Errors: [`ProtocolError::SignerMismatch`] when it is neither (another key, or another hour),
/// [`ProtocolError::SignatureRecovery`] when no key can be recovered at all.
pub fn verify_hourly(miner_id: &MinerId, identity: &Address, signature: &Signature, now: u64) -> Result<SignedHour> {
    let current = signature.recover(&signing_message(miner_id, now))?;
    if &current == identity {
        return Ok(SignedHour::Current);
    }
    let previous_time = now.checked_sub(SIGNING_PERIOD_SECS);
    let previous = match previous_time {
        Some(t) => Some(signature.recover(&signing_message(miner_id, t))?),
        None => None,
    };
    if previous.as_ref() == Some(identity) {
        return Ok(SignedHour::Previous);
    }
    Err(ProtocolError::SignerMismatch {
        reward_address: miner_id.reward_address().to_owned(),
        unix_time: now,
        expected: identity.to_string(),
        recovered_current: current.to_string(),
        recovered_previous: previous.map_or_else(|| "none".to_owned(), |a| a.to_string()),
    })
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl FromStr for Signature {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}
