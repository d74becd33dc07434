//! # heurist-protocol
//!
//! The vocabulary of a Heurist miner: the wire messages a miner and a sequencer exchange,
//! miner ids, the identity wallet and its hourly signatures, the model registry, the
//! reference miner's clamping rules, and (feature `client`) an async client for every
//! sequencer endpoint.
//!
//! Where it sits: every other crate of the workspace may depend on this one, and it depends on
//! none of them. It runs no models (`heurist-inference` does), computes no rewards
//! (`heurist-points`), and judges no results (`heurist-verify`); the miner, the local
//! sequencer and the `heurist` tool in `examples/` compose them.
//!
//! ## Strict in what it sends, tolerant in what it accepts
//! The reference miners are sloppy in places. This crate always *sends* the reference's
//! current form (miner ids and identity addresses lower case, signatures as 130 hex digits
//! without `0x`, only the fields the reference sends), and *accepts* the variants seen in the
//! wild: signatures with or without `0x`, upper-case or checksummed addresses, unknown fields
//! (kept in each type's `extra` map and sent back unchanged), numbers given as integers or
//! floats. What it refuses, it refuses with a [`ProtocolError`] naming the field.
//!
//! ## Example: decode a job, clamp it, sign the submission
//! ```
//! use heurist_protocol::{IdentityWallet, MinerId, MinerLimits, RequestAnswer, JobParams};
//!
//! let body = br#"{"job_id": "sdk-image-1", "model_id": "AAMXLAnimeMix",
//!   "model_input": {"SD": {"prompt": "a cat", "neg_prompt": "", "height": 1023, "width": 680,
//!                          "num_iterations": 50, "guidance_scale": 4, "seed": -1}}}"#;
//! let RequestAnswer::Job(job) = RequestAnswer::decode(200, body)? else { panic!("a job") };
//! let clamped = MinerLimits::default().clamp(&job, || 42)?;
//! let JobParams::Sd(sd) = &clamped.params else { panic!("an SD job") };
//! assert_eq!((sd.width, sd.height, sd.steps, sd.seed), (680, 1016, 35, 42));
//!
//! let wallet = IdentityWallet::from_phrase("test test test test test test test test test test test junk")?;
//! let miner: MinerId = "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0".parse()?;
//! let sig = wallet.sign_hourly(&miner, 1717302345)?;
//! let hour = heurist_protocol::verify_hourly(&miner, wallet.address(), &sig, 1717302345)?;
//! assert_eq!(hour, heurist_protocol::SignedHour::Current);
//! # Ok::<(), heurist_protocol::ProtocolError>(())
//! ```
//!
//! ## Feature flags
//! - `client` (off): [`client::SequencerClient`], with reqwest and tokio. Without it the crate
//!   pulls in no async runtime and no HTTP stack.

mod binding;
pub mod decode;
mod error;
mod identity;
pub mod job;
pub mod limits;
pub mod messages;
mod miner_id;
pub mod openai;
pub mod registry;
mod signature;
pub mod stream;

#[cfg(feature = "client")]
pub mod client;

pub use binding::{BindIdentity, binding_message};
pub use decode::DEFAULT_MAX_BODY_BYTES;
pub use error::{ProtocolError, Result};
pub use identity::{
    DERIVATION_PATH, IdentityWallet, KEYS_DIR_NAME, LoadedIdentity, LoosePermissions, default_keys_dir, key_file_path,
};
pub use job::{Job, LlmInput, LlmPayload, ModelInput, ModelKind, SamplerSpec, SdInput, TempCredentials};
pub use limits::{ClampedJob, JobParams, LlmParams, MinerLimits, SdParams};
pub use messages::{
    HeartbeatClock, MinerRequest, MinerSignal, MinerSubmit, NoJob, Nullable, RequestAnswer, SignalAnswer,
    SignalOptions, SubmitJob, SubmitResult, TokenUsage,
};
pub use miner_id::{Address, MinerId};
pub use registry::{ModelType, Registry, RegistryEntry};
pub use signature::{SIGNING_PERIOD_SECS, SignedHour, Signature, hour_of, signing_message, verify_hourly};
