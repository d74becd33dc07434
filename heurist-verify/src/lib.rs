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
//! - `llm` (feature `inference`): greedy chat answers re-generated on the claimed model,
//!   sampled ones rescored for their likelihood under it.
//! - `image` (feature `image`; the re-run with `inference` too): an image result against the
//!   job re-run on the claimed model, by SSIM and a perceptual hash, with a typed verdict
//!   carrying the numbers.
//!
//! ## Detection table: sampled chat answers on SmolLM2
//! `cargo run --release -p heurist-verify --features inference --example detection_table -- N`
//! rescores N jobs of `tests/fixtures/llama-cpp/smollm2_sampled.json` (48 tokens at most,
//! T 0.7 or 1.0) with `llm::check_sampled` at its default bars, on SmolLM2-135M-Instruct
//! Q4_1 (real weights):
//!
//! | answers (N = 6) | jobs | rejected | rate | z range |
//! |---|---:|---:|---:|---|
//! | honest, our engine | 6 | 0 | 0.0% | -1.4 to 1.4 |
//! | honest, llama.cpp | 6 | 0 | 0.0% | -0.7 to 1.0 |
//! | cut in half | 6 | 3 | 50.0% | -5.2 to 1.2 |
//! | random tokens | 6 | 6 | 100.0% | -34.8 to -17.4 |
//! | hotter (T + 0.5) | 6 | 6 | 100.0% | -18.2 to -7.3 |
//! | greedy | 6 | 0 | 0.0% | 2.3 to 3.7 |
//!
//! Measured on the shared 2-core build machine, where one job (three generations and six
//! scorings) took over two minutes (852 s for 6), so N is far below the issue's bar of 200
//! jobs per row and 500 honest jobs; rerun it with a larger N on a free machine before relying on the rates. Not
//! yet in the table: perturbed or re-quantised weights and dropped layers (they need a GGUF
//! writer pass), honest answers across thread counts and batch mixes, and images. The greedy
//! answer offered for a sampled job lands at z ≈ 3 over 48 tokens, inside the ±6 bar: the
//! bar is set for zero false accusations and needs the larger honest calibration to come down.
//!
//! ## Detection table: image results on the tiny SD 1.5
//! `cargo run --release -p heurist-verify --features inference,image --example
//! image_detection_table -- N` runs N seeded jobs (64x64, 6 to 14 steps of DPM++ 2M SDE Karras)
//! on heurist-inference's tiny random-weight SD 1.5 and judges honest and substituted images
//! against the verifier's re-runs (with f32 noise and with a 16-bit miner's f16 noise), under
//! `ImageThresholds::DEFAULT` (SSIM ≥ 0.95 and pHash distance ≤ 6) and `STRICT` (0.995, 2):
//!
//! | images | jobs | rejected | rate | rate, STRICT | SSIM range | pHash distance |
//! |---|---:|---:|---:|---:|---|---|
//! | honest, 1 thread vs the verifier's | 200 | 0 | 0.0% | 0.0% | 1.0000 to 1.0000 | 0 to 0 |
//! | honest + LoRA 0.8, 1 thread | 200 | 0 | 0.0% | 0.0% | 1.0000 to 1.0000 | 0 to 0 |
//! | honest, diffusers f32 (fixture) | 48 | 0 | 0.0% | 0.0% | 1.0000 to 1.0000 | 0 to 0 |
//! | honest, diffusers f16 (fixture) | 48 | 0 | 0.0% | 0.0% | 0.9999 to 1.0000 | 0 to 1 |
//! | another checkpoint (shuffled weights) | 200 | 200 | 100.0% | 100.0% | 0.2444 to 0.6237 | 3 to 18 |
//! | half the steps | 200 | 200 | 100.0% | 100.0% | 0.5279 to 0.9406 | 1 to 15 |
//! | one step fewer | 200 | 0 | 0.0% | 38.0% | 0.9685 to 0.9992 | 0 to 4 |
//! | another seed | 200 | 200 | 100.0% | 100.0% | -0.1796 to 0.2145 | 9 to 25 |
//! | fixture LoRA at 0.4 for 0.8 | 200 | 0 | 0.0% | 14.0% | 0.9854 to 0.9995 | 0 to 5 |
//! | 8x stronger LoRA at 0.4 for 0.8 | 200 | 3 | 1.5% | 93.5% | 0.8579 to 0.9970 | 0 to 5 |
//! | half size, scaled up | 200 | 200 | 100.0% | 100.0% | -0.0963 to 0.0850 | 11 to 27 |
//!
//! Honest images match to SSIM ≥ 0.9999 whoever made them (1 vs 2 threads: bit for bit;
//! diffusers in f32 and in f16, re-run here with the matching noise), and another checkpoint,
//! half the steps, another seed and a smaller image scaled up are all caught under DEFAULT. One
//! step fewer and another LoRA weight move the picture less than DEFAULT's margin allows for
//! (SSIM 0.86 to 0.9995): STRICT catches more of them, at a smaller margin for numerics not
//! measured here (GPU kernels, real models at 512 px); the fixture LoRA itself barely moves the
//! image, so its weight is nearly invisible. N = 200 (the diffusers rows: the fixture's 48
//! jobs), 716 s on the shared 2-core build machine beside other builds.
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
mod error;
#[cfg(feature = "image")]
pub mod image;
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
