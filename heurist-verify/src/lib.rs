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
//!   sampled ones rescored for their likelihood under it or, for miners running this project's
//!   engine, replayed under its seeded sampler; claimed token usage recounted with the model's
//!   tokenizer.
//! - `image` (feature `image`; the re-run with `inference` too): an image result against the
//!   job re-run on the claimed model, by SSIM, a perceptual hash and the mean pixel
//!   difference, with a typed verdict carrying the numbers.
//!
//! ## Detection table: chat answers on SmolLM2
//! The example `detection_table` judges jobs of `tests/fixtures/llama-cpp/smollm2_sampled.json`
//! (500 prompts, 48 tokens at most, T 0.7 or 1.0, llama.cpp's honest answers) on
//! SmolLM2-135M-Instruct Q4_1 (real weights) with `llm::check_sampled` at its default bars
//! (`|Z| > 6`, `ε = 1e-14`, `δ = 1e-7`, none tuned on these rows) and `llm::check_usage` on
//! the claimed token counts; the `greedy job` rows treat the same prompts as greedy jobs and
//! judge them by exact agreement (`llm::check_greedy`). Substitute models come from
//! `tools/make_llm_substitutes.py` (gguf-py): every matmul weight with gaussian noise of 5%
//! of its row's RMS, every Q4_1 weight on 8 levels instead of 16, blocks 10 and 20 of 30
//! removed. Columns: rejections by an impossible token / the z-score / a premature end / the
//! usage recount / a greedy mismatch (one answer may fail several).
//!
//! | answers (run of 2026-11-25) | jobs | rejected | rate | by token / z / end / usage / mismatch | z range |
//! |---|---:|---:|---:|---|---|
//! | honest, our engine, 1 thread | 172 | 0 | 0.0% | 0 / 0 / 0 / 0 / 0 | -5.0 to 2.2 |
//! | honest, llama.cpp (fixture) | 255 | 3 | 1.2% | 0 / 0 / 0 / 3 / 0 | -3.9 to 2.2 |
//! | perturbed weights (σ 5% of row RMS) | 172 | 0 | 0.0% | 0 / 0 / 0 / 0 / 0 | -5.5 to 1.5 |
//! | re-quantised to 3 bits | 172 | 93 | 54.1% | 0 / 93 / 4 / 0 / 0 | -19.1 to -1.6 |
//! | two layers dropped (28 of 30) | 172 | 43 | 25.0% | 5 / 41 / 0 / 0 / 0 | -13.9 to 0.4 |
//! | another temperature (T + 0.5) | 172 | 170 | 98.8% | 0 / 170 / 0 / 0 / 0 | -24.2 to -3.7 |
//! | truncated answer (cut in half) | 172 | 55 | 32.0% | 0 / 0 / 55 / 0 / 0 | -5.4 to 1.2 |
//! | random text | 172 | 172 | 100.0% | 39 / 172 / 0 / 0 / 0 | -40.4 to -12.2 |
//! | greedy answer for a sampled job | 172 | 0 | 0.0% | 0 / 0 / 0 / 0 / 0 | 1.3 to 5.6 |
//! | inflated usage (prompt × 1.25) | 172 | 172 | 100.0% | 0 / 0 / 0 / 172 / 0 | -5.0 to 2.2 |
//! | greedy job, honest, our engine, 1 thread | 172 | 0 | 0.0% | 0 / 0 / 0 / 0 / 0 | – |
//! | greedy job, perturbed weights (σ 5% of row RMS) | 172 | 169 | 98.3% | 0 / 0 / 0 / 0 / 169 | – |
//! | greedy job, re-quantised to 3 bits | 172 | 172 | 100.0% | 0 / 0 / 0 / 0 / 172 | – |
//! | greedy job, two layers dropped (28 of 30) | 172 | 172 | 100.0% | 0 / 0 / 0 / 0 / 172 | – |
//! | honest, our engine, 2 threads | 83 | 0 | 0.0% | 0 / 0 / 0 / 0 / 0 | -3.4 to 1.9 |
//!
//! Run of 2026-11-25 on the shared 2-core build machine under a load of 7 to 10 (other
//! builds), as three shards: jobs 0..89 and 100..183 with `RAYON_NUM_THREADS=1 --greedy`
//! (all rows), and jobs 200..283 with `RAYON_NUM_THREADS=2 --honest-only`; the shards were
//! stopped at the session's deadline, so N falls short of the issue's 200 per substitute
//! (172); honest answers number 510. About 16 s of CPU per job for all rows (19 generations
//! and teacher-forced scorings, the scoring fed token by token), 3 s for the honest rows
//! alone. To rerun:
//!
//! ```sh
//! python3 tools/fetch_smollm2.py
//! tools/.venv/bin/pip install gguf==0.19.0 && tools/.venv/bin/python tools/make_llm_substitutes.py
//! cargo build --release -p heurist-verify --features inference --example detection_table
//! EX=target/release/examples/detection_table
//! RAYON_NUM_THREADS=1 $EX 0..200 --greedy --json a.json     # all rows
//! RAYON_NUM_THREADS=2 $EX 200..500 --honest-only --json c.json  # more honest jobs
//! $EX --merge a.json c.json
//! ```
//!
//! What it shows, against the issue's bar (≥ 99% caught, no honest answer accused):
//! - **Honest answers**: no false accusation by the likelihood tests over 510 answers (our
//!   engine at 1 and 2 threads, llama.cpp). The three llama.cpp rejections are the usage
//!   recount's cap at `max_tokens` in the binary of this run: llama.cpp counts 49 or 50 tokens
//!   for a 48-token limit on emoji answers (claim = recount). The cap is gone since, derived
//!   from these honest answers (see `llm::usage`); under the current bound all three hold.
//!   Honest z reached -5.0 (a normal does once in 3 million): the tail is heavier than the
//!   normal model of `llm::likelihood`, so the ±6 bar is not as safe as its nominal 2e-9, and
//!   must not come down without a larger honest set.
//! - **Caught**: random text and inflated usage (100%), and, judged as greedy jobs, the
//!   re-quantised and layer-dropped models (100%) and the perturbed one (98.3%: on 3 prompts
//!   its greedy answer is the claimed model's, so there is nothing to catch). Another
//!   temperature: 98.8% (two stayed within the bar: z -3.7 at the least extreme).
//! - **Not caught at 99% in sampled jobs**: perturbed weights (0%: its z stays within the
//!   honest range), 3-bit re-quantisation (54%), two dropped layers (25%), a truncated answer
//!   (32%, by the end test only; a cut where the model could have stopped is no evidence) and
//!   the greedy answer offered for a sampled job (0%: z 1.3 to 5.6 against honest answers'
//!   2.2 at most, overlapping). The z-statistic moves with `√n` times the per-token gap
//!   between the substitute and the claimed model, and 48 tokens of a close substitute do not
//!   move it past a bar set for zero false accusations. Longer answers or greedy audits
//!   (exact agreement, above) catch them; no threshold was tuned on these rows.
//! - Not in the table: batch mixes (the engine answers one request at a time here), honest
//!   greedy answers across thread counts (each shard regenerates at its own thread count).
//!   Images have their own table below.
//!
//! ### Seeded replay: sampled answers of our engine
//! `detection_table --seeded` judges every answer our sampler made for a job with
//! `llm::check_seeded` (the job's seeded draws replayed under the claimed model, one scoring
//! pass; default bar `max_miss = 1e-4`). Runs of 2026-12-02: jobs 0..200 of the fixture in
//! four shards at `RAYON_NUM_THREADS=1` (`0..100` and `100..200` stopped after 32 and 31 jobs,
//! resumed as `32..100` and `131..200`; `--merge` of the four JSON files), then jobs 200..300
//! with `--honest-only` at `RAYON_NUM_THREADS=2` (593 s), where the verifier runs on two
//! threads and a third honest answer is made in a one-thread pool:
//!
//! | answers (seeded replay) | jobs | rejected | rate |
//! |---|---:|---:|---:|
//! | honest, our engine, alone | 200 | 0 | 0.0% |
//! | honest, our engine, in a batch of 4 | 200 | 0 | 0.0% |
//! | honest, our engine, alone, 2 threads | 100 | 0 | 0.0% |
//! | honest, our engine, in a batch of 4, 2 threads | 100 | 0 | 0.0% |
//! | honest, our engine, 1 thread, verified on 2 | 100 | 0 | 0.0% |
//! | perturbed weights (σ 5% of row RMS) | 200 | 200 | 100.0% |
//! | re-quantised to 3 bits | 200 | 200 | 100.0% |
//! | two layers dropped (28 of 30) | 200 | 200 | 100.0% |
//! | another temperature (T + 0.5) | 200 | 200 | 100.0% |
//! | truncated answer (cut in half) | 200 | 200 | 100.0% |
//! | random text | 200 | 200 | 100.0% |
//! | greedy answer for a sampled job | 200 | 200 | 100.0% |
//!
//! 700 honest answers (one and two threads, alone and in batches, made and checked at
//! different thread counts), none refused; every substitute caught. Where the likelihood test
//! above catches 0% of the perturbed model and 25–54% of the others in sampled jobs, the replay
//! catches all of them. It applies only to answers whose miner ran this engine's sampler:
//! llama.cpp's and vLLM's answers draw other tokens from the same seed and stay with the
//! likelihood test, which refused none of llama.cpp's 255 answers above (under the current
//! usage bound). About 10 to 20 s of CPU per job for all rows (ten generations and eight
//! replays), 6 s for the honest rows. `heurist verify --seeded-replay` runs this check on a
//! job and its `miner_submit` body.
//!
//! ## Detection table: image results on the tiny SD 1.5
//! `cargo run --release -p heurist-verify --features inference,image --example
//! image_detection_table -- N` runs N seeded jobs (64x64, 6 to 14 steps of DPM++ 2M SDE Karras)
//! on heurist-inference's tiny random-weight SD 1.5 and judges honest and substituted images
//! against the verifier's re-runs (with f32 noise and with a 16-bit miner's f16 noise), under
//! `ImageThresholds::DEFAULT` (SSIM ≥ 0.95, pHash distance ≤ 6, mean difference ≤ 1 level),
//! `STRICT` (0.995, 2, 0.6) and `STRUCTURAL` (DEFAULT without the pixel bar). Run of
//! 2026-12-02, N = 250, 918 s on 2 cores (beside a compile):
//!
//! | images | jobs | rejected | rate | rate, STRICT | rate, STRUCTURAL | SSIM range | pHash distance | mean difference |
//! |---|---:|---:|---:|---:|---:|---|---|---|
//! | honest, 1 thread vs the verifier's | 250 | 0 | 0.0% | 0.0% | 0.0% | 1.0000 to 1.0000 | 0 to 0 | 0.000 to 0.000 |
//! | honest + LoRA 0.8, 1 thread | 250 | 0 | 0.0% | 0.0% | 0.0% | 1.0000 to 1.0000 | 0 to 0 | 0.000 to 0.000 |
//! | honest, diffusers f32 (fixture) | 48 | 0 | 0.0% | 0.0% | 0.0% | 1.0000 to 1.0000 | 0 to 0 | 0.000 to 0.000 |
//! | honest, diffusers f16 (fixture) | 48 | 0 | 0.0% | 0.0% | 0.0% | 0.9999 to 1.0000 | 0 to 1 | 0.127 to 0.324 |
//! | another checkpoint (shuffled weights) | 250 | 250 | 100.0% | 100.0% | 100.0% | 0.2444 to 0.6237 | 3 to 18 | 36.396 to 59.483 |
//! | half the steps | 250 | 250 | 100.0% | 100.0% | 100.0% | 0.5279 to 0.9406 | 0 to 16 | 13.608 to 43.957 |
//! | one step fewer | 250 | 250 | 100.0% | 100.0% | 0.0% | 0.9685 to 0.9992 | 0 to 4 | 1.448 to 9.184 |
//! | another seed | 250 | 250 | 100.0% | 100.0% | 100.0% | -0.1796 to 0.2145 | 9 to 25 | 64.617 to 85.992 |
//! | fixture LoRA at 0.4 for 0.8 | 250 | 250 | 100.0% | 100.0% | 0.0% | 0.9854 to 0.9995 | 0 to 5 | 1.163 to 6.007 |
//! | 8x stronger LoRA at 0.4 for 0.8 | 250 | 250 | 100.0% | 100.0% | 1.6% | 0.8579 to 0.9970 | 0 to 5 | 2.659 to 18.644 |
//! | half size, scaled up | 250 | 250 | 100.0% | 100.0% | 100.0% | -0.0963 to 0.0850 | 11 to 27 | 66.067 to 86.160 |
//!
//! 596 honest images, none refused; every substitute caught under DEFAULT. Honest images match
//! to SSIM ≥ 0.9999 and within 0.32 levels on average whoever made them (1 vs 2 threads: bit
//! for bit; diffusers in f32 and in f16, re-run here with the matching noise). Structure alone
//! (STRUCTURAL, the bars before the pixel bar) misses one step fewer and another LoRA weight:
//! those keep the picture's layout (SSIM up to 0.9995) but move every pixel by 1.16 levels or
//! more, which the mean difference sees. The pixel bar (1 level) is 3.1 times the worst honest
//! pair and 0.86 of the closest cheat: it is calibrated on these numerics (this engine, and
//! diffusers on the CPU in f32 and f16); a verifier facing another stack (GPU kernels, real
//! models at 512 px) should rerun this table on it, or fall back to STRUCTURAL, which still
//! catches another checkpoint, seed, size or half the steps.
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
