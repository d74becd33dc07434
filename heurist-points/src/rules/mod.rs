//! Reward rule sets as data: what a job is worth, in which currency, on which hardware.
//!
//! A [`RuleData`] is the serde shape of a rule-set file (TOML or JSON; see
//! `data/rules/seed.toml` for a commented example of every field). A [`RuleSet`] is a
//! validated `RuleData` with the lookups computing points needs; it is what
//! [`RuleSet::preset`], [`RuleSet::from_path`], [`RuleSet::from_toml_str`] and
//! [`RuleSet::from_json_str`] return. Validation refuses unknown categories, negative
//! multipliers, overlapping NFT tiers, zero units and unordered curves, each with the line
//! of the offending item when the rule set came from text.
//!
//! # Normalisation (the unit)
//! The seed's table puts SD 1.5 at 0.3 and SDXL at 1; Season 1 defined one Waifu Point as
//! one 512x512 SD 1.5 image at 20 steps. Both hold at once if the unit is a *reference
//! job*: `[waifu.unit] width = 512, height = 512, steps = 20, category = "sd15"`. A job's
//! points are its pixel-steps over the reference's, times its multiplier over the
//! reference category's: `w*h*steps / (512*512*20) * m / 0.3`, i.e. the unit is
//! 512*512*20*0.3 = 1,572,864 pixel-steps at multiplier 1. Leave `category` out to make
//! the unit plain pixel-steps at multiplier 1. Llama Points use the same shape:
//! `[llama.unit] tokens = 1000, model = "openhermes-mixtral-8x7b-gptq"` (the 1x model).

mod curve;
mod load;
mod locate;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalogue::Gpu;
use crate::decimal::Decimal;

pub(crate) use curve::factor_at;
pub(crate) use load::line_of;
pub use load::{DEFAULT_PRESET, PRESETS};

/// The serde shape of a rule set, as written in a TOML or JSON file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleData {
    /// A short name, e.g. `seed`.
    pub name: String,
    /// Where the numbers come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Image jobs (Waifu Points).
    pub waifu: ImageRules,
    /// LLM jobs (Llama Points).
    pub llama: LlmRules,
    /// Registry type of image model ids, used when a job record leaves `model_type` out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_types: BTreeMap<String, String>,
    /// Boosts (Heurist Imaginaries NFT tiers).
    #[serde(default)]
    pub boost: BoostRules,
    /// The dated phases (epochs), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseRule>,
}

/// Rules for image jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRules {
    /// The reference job worth one Waifu Point.
    pub unit: ImageUnit,
    /// A job that takes longer than this earns nothing.
    pub timeout_s: Decimal,
    /// The reward factor by latency inside the timeout; empty means flat 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_curve: Vec<CurvePoint>,
    /// The categories by name.
    pub categories: BTreeMap<String, ImageCategory>,
    /// Registry type (or `prefix*`) → category name.
    pub types: BTreeMap<String, String>,
}

/// The reference image job of one Waifu Point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageUnit {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Sampling steps.
    pub steps: u32,
    /// The category whose multiplier the reference carries; none means multiplier 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// One image category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageCategory {
    /// A human name, e.g. `Stable Diffusion 1.5 checkpoint and LoRA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The multiplier (0 disables the category).
    pub multiplier: Decimal,
    /// The minimum GPUs, one per series, as catalogue names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub min_gpu: Vec<String>,
    /// Widths above this are counted as this (the registry's `max_width`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_width: Option<u32>,
    /// Heights above this are counted as this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
    /// Steps above this are counted as this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// A timeout for this category instead of `waifu.timeout_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<Decimal>,
}

/// Rules for LLM jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmRules {
    /// The reference work worth one Llama Point.
    pub unit: LlmUnit,
    /// A job that takes longer than this earns nothing.
    pub timeout_s: Decimal,
    /// The reward factor by latency inside the timeout; empty means flat 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_curve: Vec<CurvePoint>,
    /// Registry types (or `prefix*`) of LLM jobs, e.g. `llm*`.
    pub types: Vec<String>,
    /// The rewarded models by model id.
    pub models: BTreeMap<String, LlmModel>,
}

/// The reference LLM work of one Llama Point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmUnit {
    /// Input plus output tokens.
    pub tokens: u64,
    /// The model whose multiplier the reference carries; none means multiplier 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// One rewarded LLM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmModel {
    /// The multiplier (0 disables the model).
    pub multiplier: Decimal,
    /// The GPU memory the model needs, in GB.
    pub vram_gb: u32,
    /// A remark, e.g. `to be discontinued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A point of a latency curve: at `latency_s` the reward is multiplied by `factor`.
///
/// Between points the factor is linear in latency (rounded down to a millionth); before the
/// first point it is the first factor, after the last the last factor, and past the timeout
/// it is 0 whatever the curve says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurvePoint {
    /// Seconds.
    pub latency_s: Decimal,
    /// The reward factor at that latency.
    pub factor: Decimal,
}

/// Boost rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoostRules {
    /// How many GPUs (miner ids) one NFT boosts at most.
    #[serde(default = "default_gpus_per_nft")]
    pub gpus_per_nft: u32,
    /// NFT count → multiplier. Empty: no NFT boost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nft_tiers: Vec<NftTier>,
}

/// The seed: "Each NFT can boost up to 3 GPUs."
pub const DEFAULT_GPUS_PER_NFT: u32 = 3;

fn default_gpus_per_nft() -> u32 {
    DEFAULT_GPUS_PER_NFT
}

impl Default for BoostRules {
    fn default() -> Self {
        Self { gpus_per_nft: DEFAULT_GPUS_PER_NFT, nft_tiers: Vec::new() }
    }
}

/// An NFT tier: wallets holding `min_nfts..=max_nfts` NFTs get `multiplier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NftTier {
    /// The fewest NFTs of the tier (at least 1).
    pub min_nfts: u32,
    /// The most NFTs of the tier; none means no upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nfts: Option<u32>,
    /// The multiplier applied to a boosted GPU's points.
    pub multiplier: Decimal,
}

impl NftTier {
    /// Whether `nfts` falls in this tier.
    pub fn contains(&self, nfts: u32) -> bool {
        nfts >= self.min_nfts && self.max_nfts.is_none_or(|m| nfts <= m)
    }

    pub(crate) fn range_text(&self) -> String {
        match self.max_nfts {
            Some(m) => format!("{}..={m}", self.min_nfts),
            None => format!("{}..", self.min_nfts),
        }
    }
}

/// A dated phase (epoch) of emission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseRule {
    /// The phase id, as the ledger stores it.
    pub id: String,
    /// Start, Unix seconds.
    pub start_unix_s: i64,
    /// End (exclusive), Unix seconds; none for the open-ended last phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_unix_s: Option<i64>,
    /// A fixed emission shared pro rata by contribution, instead of points as earned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emission: Option<Emission>,
}

/// A fixed emission per currency for one phase, in points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emission {
    /// Waifu Points emitted in the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waifu: Option<Decimal>,
    /// Llama Points emitted in the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama: Option<Decimal>,
}

/// What a registry type maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// An image category, by name.
    Image(String),
    /// An LLM job; the model id picks the multiplier.
    Llm,
}

/// A validated rule set, ready to compute points. See [`RuleData`] for its content.
#[derive(Clone, Debug)]
pub struct RuleSet {
    pub(crate) data: RuleData,
    /// Exact registry type → target.
    pub(crate) exact_types: BTreeMap<String, Target>,
    /// `prefix*` patterns, longest prefix first.
    pub(crate) prefix_types: Vec<(String, Target)>,
    /// Reference pixel-steps x reference multiplier (millionths): the Waifu divisor.
    pub(crate) waifu_divisor: u128,
    /// Reference tokens x reference multiplier (millionths): the Llama divisor.
    pub(crate) llama_divisor: u128,
    /// Each category's minimum GPUs, resolved in the catalogue.
    pub(crate) min_gpus: BTreeMap<String, Vec<Gpu>>,
}

impl RuleSet {
    /// The rule set's data.
    pub fn data(&self) -> &RuleData {
        &self.data
    }

    /// The rule set's name.
    pub fn name(&self) -> &str {
        &self.data.name
    }

    /// The target of a registry type: exact match first, then the longest `prefix*`.
    pub(crate) fn target_of(&self, model_type: &str) -> Option<&Target> {
        self.exact_types.get(model_type).or_else(|| {
            self.prefix_types
                .iter()
                .find(|(prefix, _)| model_type.starts_with(prefix.as_str()))
                .map(|(_, t)| t)
        })
    }

    /// The NFT multiplier of a wallet holding `nfts` NFTs (none below the first tier).
    pub fn nft_multiplier(&self, nfts: u32) -> Option<Decimal> {
        self.data.boost.nft_tiers.iter().find(|t| t.contains(nfts)).map(|t| t.multiplier)
    }

    /// The phase that contains `unix_s`, if any.
    pub fn phase_at(&self, unix_s: i64) -> Option<&PhaseRule> {
        self.data
            .phases
            .iter()
            .find(|p| p.start_unix_s <= unix_s && p.end_unix_s.is_none_or(|e| unix_s < e))
    }
}
