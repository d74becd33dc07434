//! Miner ids: the reward wallet address, optionally with a per-GPU tag.
//!
//! A miner id is `0x` + 40 hex digits (the reward wallet), optionally followed by `-tag` where
//! tag is `[A-Za-z0-9_]+` (the reference appends the first six hex digits of the GPU's UUID
//! when the operator gives none). The address part is case-insensitive on input and always
//! lower case on the wire; the tag keeps its case. The reference miner accepts anything with a
//! warning; this type refuses what is not a miner id, so a sequencer can answer with a 4xx
//! instead of crediting a typo.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ProtocolError, Result};

/// The longest tag accepted. The reference sets no limit; 64 keeps ids printable in one line.
const MAX_TAG_LEN: usize = 64;

/// A parsed miner id (`0x<40 hex>[-tag]`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MinerId {
    /// `0x` + 40 lower-case hex digits.
    address: String,
    tag: Option<String>,
}

impl MinerId {
    /// Parses a miner id, lower-casing its address part.
    ///
    /// ```
    /// use heurist_protocol::MinerId;
    /// let id: MinerId = "0xABCDEF0123456789abcdef0123456789ABCDEF01-rtx4090".parse()?;
    /// assert_eq!(id.to_string(), "0xabcdef0123456789abcdef0123456789abcdef01-rtx4090");
    /// assert_eq!(id.reward_address(), "0xabcdef0123456789abcdef0123456789abcdef01");
    /// assert_eq!(id.tag(), Some("rtx4090"));
    /// # Ok::<(), heurist_protocol::ProtocolError>(())
    /// ```
    pub fn parse(value: &str) -> Result<Self> {
        let err = |reason| ProtocolError::MinerId { value: value.chars().take(120).collect(), reason };
        let (addr, tag) = match value.split_once('-') {
            Some((a, t)) => (a, Some(t)),
            None => (value, None),
        };
        let address = parse_address(addr).map_err(|_| err("the address part is not 0x followed by 40 hex digits"))?;
        let tag = match tag {
            None => None,
            Some("") => return Err(err("the tag after '-' is empty")),
            Some(t) if t.len() > MAX_TAG_LEN => return Err(err("the tag is longer than 64 characters")),
            Some(t) if !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                return Err(err("the tag holds a character other than A-Z, a-z, 0-9 and _"));
            }
            Some(t) => Some(t.to_owned()),
        };
        Ok(Self { address, tag })
    }

    /// Builds a miner id from a reward address and an optional tag.
    pub fn new(reward_address: &str, tag: Option<&str>) -> Result<Self> {
        match tag {
            Some(t) => Self::parse(&format!("{reward_address}-{t}")),
            None => Self::parse(reward_address),
        }
    }

    /// The reward wallet, `0x` + 40 lower-case hex digits: the part that is signed and paid.
    pub fn reward_address(&self) -> &str {
        &self.address
    }

    /// The per-GPU tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

/// Parses `0x` + 40 hex digits (any case) into the lower-case form.
pub(crate) fn parse_address(value: &str) -> Result<String> {
    let hex = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X"));
    match hex {
        Some(h) if h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("0x{}", h.to_ascii_lowercase()))
        }
        _ => Err(ProtocolError::Address { value: value.chars().take(120).collect() }),
    }
}

impl fmt::Display for MinerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}-{}", self.address, t),
            None => f.write_str(&self.address),
        }
    }
}

impl fmt::Debug for MinerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MinerId({self})")
    }
}

impl FromStr for MinerId {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for MinerId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MinerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An Ethereum address kept in lower-case `0x` form, as the protocol sends identity addresses.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(String);

impl Address {
    /// Parses `0x` + 40 hex digits, any case (checksummed addresses are accepted, the checksum
    /// is not enforced: the reference compares addresses lower-cased).
    pub fn parse(value: &str) -> Result<Self> {
        parse_address(value).map(Self)
    }

    /// The lower-case `0x` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_alloy(a: alloy_primitives::Address) -> Self {
        Self(format!("{a:#x}"))
    }

    /// Whether this is the zero address (an identity contract's "not bound").
    pub fn is_zero(&self) -> bool {
        self.0[2..].bytes().all(|b| b == b'0')
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.0)
    }
}

impl FromStr for Address {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0xabcdef0123456789abcdef0123456789abcdef01";

    #[test]
    fn parses_plain_tagged_and_upper_case() {
        assert_eq!(MinerId::parse(A).unwrap().to_string(), A);
        let up = format!("0x{}", A[2..].to_ascii_uppercase());
        assert_eq!(MinerId::parse(&up).unwrap().to_string(), A);
        let t = MinerId::parse(&format!("{up}-GPU_0")).unwrap();
        assert_eq!(t.to_string(), format!("{A}-GPU_0"));
        assert_eq!(t.reward_address(), A);
    }

    #[test]
    fn refuses_what_is_not_an_id() {
        for bad in ["", "0x", "abc", &A[..41], &format!("{A}0"), &format!("{A}-"), &format!("{A}-a b"),
            &format!("{A}-tag-more"), "0xzzcdef0123456789abcdef0123456789abcdef01", &format!("{A}-{}", "x".repeat(65))]
        {
            let e = MinerId::parse(bad).unwrap_err();
            assert!(matches!(e, ProtocolError::MinerId { .. }), "{bad}: {e}");
        }
    }
}
