//! Proofs a sequencer can ask for beyond the hourly submission signature, where the network's
//! protocol leaves it room: a reward wallet naming its identity (what the network's contract
//! `identityAddress` records), and a signed `miner_request`.
//!
//! The network binds a reward wallet to its identity wallet in a contract, with a transaction
//! from the reward wallet. A sequencer that is not the network has no contract; binding "the
//! first identity that signs" lets any key claim a wallet nobody has used yet. A
//! [`BindIdentity`] is the same proof off-chain: an EIP-191 signature *by the reward wallet*
//! of [`binding_message`], which no other key can make.
//!
//! ```
//! use heurist_protocol::{BindIdentity, IdentityWallet};
//! let reward = IdentityWallet::generate()?; // the reward wallet's key (any secp256k1 key)
//! let identity = IdentityWallet::generate()?;
//! let bind = BindIdentity::sign(&reward, identity.address(), 1_717_300_000)?;
//! bind.verify(1_717_300_100, 600)?;
//! assert_eq!(&bind.identity_address, identity.address());
//! # Ok::<(), heurist_protocol::ProtocolError>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::decode;
use crate::error::{ProtocolError, Result};
use crate::identity::IdentityWallet;
use crate::miner_id::Address;
use crate::signature::Signature;

/// The text a reward wallet signs to name its identity wallet at `unix_time`.
///
/// ```
/// use heurist_protocol::{Address, binding_message};
/// let r = Address::parse("0x00000000000000000000000000000000000000aa")?;
/// let i = Address::parse("0x00000000000000000000000000000000000000bb")?;
/// assert_eq!(
///     binding_message(&r, &i, 1717300800),
///     "heurist identity binding: reward wallet 0x00000000000000000000000000000000000000aa \
///      signs with identity 0x00000000000000000000000000000000000000bb from 1717300800"
/// );
/// # Ok::<(), heurist_protocol::ProtocolError>(())
/// ```
pub fn binding_message(reward: &Address, identity: &Address, unix_time: u64) -> String {
    format!("heurist identity binding: reward wallet {reward} signs with identity {identity} from {unix_time}")
}

/// Body of a sequencer's `POST /bind_identity`: the reward wallet's signature naming the
/// identity that signs its submissions from `timestamp` on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindIdentity {
    /// The reward wallet (a miner id's address part), lower case.
    pub reward_address: Address,
    /// The identity wallet that will sign its submissions.
    pub identity_address: Address,
    /// Unix seconds when it was signed; a later binding replaces an earlier one.
    pub timestamp: u64,
    /// EIP-191 signature of [`binding_message`] by the reward wallet.
    pub signature: Signature,
}

impl BindIdentity {
    /// Signs a binding with the reward wallet's key.
    pub fn sign(reward_key: &IdentityWallet, identity: &Address, unix_time: u64) -> Result<Self> {
        let reward = reward_key.address().clone();
        let signature = reward_key.sign_text(&binding_message(&reward, identity, unix_time))?;
        Ok(Self { reward_address: reward, identity_address: identity.clone(), timestamp: unix_time, signature })
    }

    /// Decodes a body (sequencer side).
    pub fn from_slice(body: &[u8]) -> Result<Self> {
        decode::json("bind_identity", body, decode::DEFAULT_MAX_BODY_BYTES)
    }

    /// Checks that the reward wallet itself signed it, within `max_skew_s` seconds of `now`.
    ///
    /// Errors: [`ProtocolError::InvalidField`] naming `timestamp` when it is too far from now,
    /// or `signature` when another key signed.
    pub fn verify(&self, now: u64, max_skew_s: u64) -> Result<()> {
        if self.timestamp.abs_diff(now) > max_skew_s {
            return Err(ProtocolError::invalid(
                "timestamp",
                self.timestamp,
                format!("more than {max_skew_s} s from the sequencer's clock ({now})"),
            ));
        }
        let signer = self.signature.recover(&binding_message(&self.reward_address, &self.identity_address, self.timestamp))?;
        if signer != self.reward_address {
            return Err(ProtocolError::invalid(
                "signature",
                self.signature.to_hex(),
                format!("signed by {signer}, not by the reward wallet {}", self.reward_address),
            ));
        }
        Ok(())
    }
}
