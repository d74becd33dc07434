//! Heurist's reward rules as data, a GPU catalogue, NFT boosts, and a durable points ledger.
//!
//! Heurist miners earn **Waifu Points** for image jobs and **Llama Points** for LLM jobs.
//! The network's rules change from season to season, so here they are data: a
//! [`RuleSet`] loaded at run time from TOML or JSON, or one of two shipped presets
//! (`seed`, the seed's table and the default; `later`, the later published table). This
//! crate computes, exactly and in integers:
//!
//! - the points of one finished job ([`RuleSet::points`] of a [`JobRecord`]), in one
//!   currency ([`Points`]; [`Amount<Waifu>`] and [`Amount<Llama>`] cannot be added);
//! - whether a GPU may run a category or model, and how GPUs rank ([`GpuCatalogue`]);
//! - which of a wallet's GPUs an NFT boost should go to ([`boost`]);
//! - balances in an append-only ledger with phases, slashes and pro-rata emission
//!   ([`ledger`]), on an SQLite file or a PostgreSQL server.
//!
//! It is **not** the wire protocol, the model registry or the sequencer client
//! (`heurist-protocol`), it runs no model (`heurist-inference`), and it judges no result
//! (`heurist-verify`, which turns a verdict into a slash entry of this ledger). It depends
//! on none of our crates; `heurist-verify` and the `heurist` CLI use it.
//!
//! ```
//! use heurist_points::{JobRecord, RuleSet};
//!
//! let rules = RuleSet::load("seed")?; // or a path: RuleSet::load("rules.toml")
//! let job = JobRecord::from_json_str(r#"{
//!     "model_id": "SDXL", "model_type": "sdxl10",
//!     "width": 1024, "height": 1024, "steps": 20,
//!     "latency_s": 7.2, "hardware": "NVIDIA GeForce RTX 4090"
//! }"#)?;
//! let points = rules.points(&job)?;
//! // 1024*1024*20 / (512*512*20) * 1 / 0.3 = 13.333333 Waifu Points (rounded down).
//! assert_eq!(serde_json::to_string(&points).unwrap(),
//!            r#"{"currency":"waifu","points":13.333333}"#);
//! # Ok::<(), heurist_points::PointsError>(())
//! ```
//!
//! # The job record
//! A [`JobRecord`] is JSON with these fields:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `model_id` | string | the registry model name (`SDXL`, `dolphin-2.9-llama3-8b`) |
//! | `model_type` | string, optional | the registry `type` (`sd15`, `composite15`, `sdxl10`, `compositexl`, `flux-dev`, `flux-dev-lora`, `llm...`); may be left out where the rule set knows the model id |
//! | `width`, `height`, `steps` | integers, default 0 | image size and sampling steps actually used |
//! | `input_tokens`, `output_tokens` | integers, default 0 | tokens of the chat-templated prompt and of the answer |
//! | `latency_s` | number | seconds from job start to result |
//! | `hardware` | string, optional | the GPU name as `nvidia-smi` prints it; when given it must be in the catalogue and meet the category's minimum GPU or the model's VRAM |
//!
//! # Points, exactly
//! Image: `w * h * steps` (clamped to the category's `max_*`) over the unit's reference
//! pixel-steps, times the category multiplier over the reference category's. LLM:
//! `input + output tokens` over the unit's tokens, times the model multiplier over the
//! reference model's. Past the timeout (18 s image, 180 s LLM by default) a job earns 0;
//! inside it the latency curve (flat by default) applies. Multipliers are decimals read
//! into integer millionths ([`Decimal`]); points are integer micro-points, **rounded down
//! once per job**, so a reward never exceeds the rules and totals are the same in any
//! order or batching. The unit is a rule-set parameter; the presets define one Waifu Point
//! as a 512x512, 20-step SD 1.5 image (Season 1) while keeping the seed's multipliers
//! (SD 1.5 at 0.3), and one Llama Point as 1,000 tokens of the 1x Mixtral model. See
//! [`rules`] for the reasoning.
//!
//! # Feature flags
//! - `sqlite` (default): [`ledger::SqliteLedger`], an embedded ledger in one file (bundled
//!   SQLite; no system library, no tokio).
//! - `postgres`: [`ledger::PostgresLedger`] on a PostgreSQL server, for a reward service at
//!   network scale. The synchronous `postgres` client runs tokio inside, hence opt-in.
//!
//! Without either, rules, points, the catalogue and boosts all work, and
//! [`ledger::open_ledger`] reports the missing backend as
//! [`PointsError::BackendNotCompiled`].

pub mod boost;
mod catalogue;
mod currency;
mod decimal;
mod error;
mod job;
pub mod ledger;
pub mod rules;

pub use catalogue::{Gpu, GpuCatalogue};
pub use currency::{Amount, Currency, CurrencyKind, Llama, Points, Totals, Waifu};
pub use decimal::Decimal;
pub use error::{PointsError, Result};
pub use job::{JobKind, JobRecord};
pub use ledger::{open_ledger, LedgerStore};
pub use rules::{RuleData, RuleSet};
