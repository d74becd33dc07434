//! # heurist-verify
//!
//! Judges the results of Heurist miners, cheaply first. The network names three cheats: wrong
//! or low-quality results, tampered model files, and tampered latency and device metrics. This
//! crate holds the open checks against them, each returning a verdict with its evidence or a
//! typed refusal ([`VerifyError`]) that carries the values at fault:
//!
//! - [`checksum`]: the SHA-256 of a model file against the registry's checksum, at the speed
//!   of the CPU's SHA instructions, several files at once, with a progress callback and a
//!   [`VerifiedCache`] so that an unchanged file is hashed once. A file that does not match
//!   is never reported as verified.
//! - [`signature`]: the signer of a `miner_submit` against the identity bound to the reward
//!   wallet (an [`IdentityBinding`]: a contract look-up in production, a table in tests), for
//!   the current hour or the previous one.
//!
//! - [`metrics`]: claimed GPU and latencies against physics (the job's FLOPs at the GPU's
//!   peak, the category's minimum GPU, the model's VRAM; GPU catalogue and rules of
//!   `heurist-points`) and against the miner's peers on the same GPU and model.
//! - [`audit`]: which results to re-check, with a probability set so that cheating has a
//!   negative expected value (PoSP-style; the formula is in the module docs), and a failed
//!   check turned into slash entries of the `heurist-points` ledger with its evidence.
//! - `llm` (feature `inference`): greedy chat answers of any engine judged in one
//!   teacher-forced pass on the claimed model (every token within the margin by which honest
//!   engines' logits disagree, the end where the model ends), or re-generated exactly for
//!   miners running this project's engine; sampled ones rescored for their likelihood under
//!   it or, for miners running this project's engine, replayed under its seeded sampler;
//!   claimed token usage recounted with the model's tokenizer. Every bar is calibrated on
//!   honest answers of other engines (llama.cpp, transformers in f32 and bf16).
//! - `image` (feature `image`; the re-run with `inference` too): an image result against the
//!   job re-run on the claimed model with the noise of each precision a miner may run in (f32,
//!   f16, bf16), by PSNR within that precision's bars, SSIM and a perceptual hash, with a typed
//!   verdict carrying the numbers. The bars are calibrated on honest images of the reference
//!   miner's own stack (diffusers at its pins, its vendored pipelines, three precisions).
//!
//! ## Detection tables
//! What each check catches and what honest answers and images of other engines reach, with
//! the runs that measured it, is on a page of its own: [`detection`].
//!
//! ## What it is not for
//! It runs no models itself: re-execution calls `heurist-inference`. It awards and slashes
//! nothing: points and the ledger are `heurist-points`. It speaks no HTTP: the wire types come
//! from `heurist-protocol`, and the `heurist` tool and the sequencer in `examples/` call this
//! crate.
//!
//! Siblings: uses `heurist-protocol` and `heurist-points` (its catalogue, rules and ledger
//! entry types, without a ledger backend) always, and `heurist-inference` behind a feature.
//! Used by the sequencer, the miner (to check its own model files before loading them) and
//! the `heurist` tool.
//!
//! ## Example: check a model file, then a submission
//! ```
//! use heurist_protocol::{Address, IdentityWallet, MinerId, MinerSubmit};
//! use heurist_verify::{StaticBindings, VerifyError, verify_file, verify_submission};
//!
//! let dir = tempfile::tempdir()?;
//! let model = dir.path().join("model.safetensors");
//! std::fs::write(&model, b"abc")?;
//! // The registry gives checksums in upper case; any case is accepted.
//! let abc = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
//! verify_file(&model, abc, None, |_| {})?;
//! std::fs::write(&model, b"abd")?;
//! assert!(matches!(verify_file(&model, abc, None, |_| {}), Err(VerifyError::ChecksumMismatch { .. })));
//!
//! let wallet = IdentityWallet::from_phrase("test test test test test test test test test test test junk")?;
//! let miner: MinerId = "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0".parse()?;
//! let now = 1717302345;
//! let body = serde_json::json!({
//!     "miner_id": miner, "job_id": "job-1", "result": {"Text": "[]"},
//!     "request_latency": 0.1, "inference_latency": 1.0,
//!     "signature": wallet.sign_hourly(&miner, now)?, "identity_address": wallet.address(),
//! });
//! let submit = MinerSubmit::from_slice(body.to_string().as_bytes())?;
//! let bindings: StaticBindings = [(Address::parse(miner.reward_address())?, wallet.address().clone())].into_iter().collect();
//! let verdict = verify_submission(&submit, &bindings, now)?;
//! assert_eq!(&verdict.identity, wallet.address());
//! assert!(matches!(verify_submission(&submit, &StaticBindings::new(), now), Err(VerifyError::NotBound { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Feature flags
//! `default = []`. The checksum, signature, metrics and audit checks are always built, with no
//! async runtime, no model engine and no database: `cargo add heurist-verify
//! --no-default-features` pulls neither tokio nor candle nor SQLite.
//! - `inference` (off): the `llm` module, chat answers re-checked on the claimed model with
//!   `heurist-inference`.
//! - `image` (off): the `image` module, image results compared with a re-run (`image`,
//!   `image-compare`, `image_hasher`; no candle); with `inference` also the re-run itself
//!   (`image::rerun`).

pub mod audit;
pub mod checksum;
pub mod detection {
    //! The detection tables: honest answers and images of other engines never accused, cheats
    //! caught, with the runs that measured it.
    #![doc = include_str!("../DETECTION.md")]
}
mod error;
#[cfg(feature = "image")]
pub mod image;
#[cfg(feature = "inference")]
pub mod jobs;
#[cfg(feature = "inference")]
pub mod llm;
pub mod metrics;
pub mod signature;

pub use checksum::{
    DEFAULT_BUFFER_BYTES, DEFAULT_BUFFERS, FileHasher, Progress, Verified, VerifiedCache, parse_sha256_hex,
    sha256_file, sha256_files, verify_file, verify_model_file,
};
pub use error::{BindingSource, Result, VerifyError};
pub use signature::{IdentityBinding, SignatureVerdict, StaticBindings, verify_submission, verify_submission_json};
