//! Validation of [`RuleData`] into a [`RuleSet`].
//!
//! Every check names the path of the offending item as key segments (`["waifu",
//! "categories", "sd15", "multiplier"]`), so that the loader can find its line in the text.

use std::collections::{BTreeMap, BTreeSet};

use super::{CurvePoint, RuleData, RuleSet, Target};
use crate::catalogue::{Gpu, GpuCatalogue};
use crate::decimal::Decimal;
use crate::error::{PointsError, Result};

/// A validation error and the path of the item at fault.
pub(crate) struct Located {
    pub(crate) error: PointsError,
    pub(crate) path: Vec<String>,
}

/// Boxed: the error is rare and large, the `Ok` path common and small.
type Checked<T> = std::result::Result<T, Box<Located>>;

/// A dotted display of a path, quoting segments that hold a dot or a space.
pub(crate) fn display_path(path: &[String]) -> String {
    path.iter()
        .map(|s| {
            if s.is_empty() || s.contains(['.', ' ', '"']) {
                format!("{s:?}")
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn seg(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

fn invalid(path: Vec<String>, value: impl ToString, expected: &'static str) -> Box<Located> {
    Box::new(Located {
        error: PointsError::InvalidRule { path: display_path(&path), value: value.to_string(), expected, line: None },
        path,
    })
}

fn non_negative(path: Vec<String>, value: Decimal) -> Checked<()> {
    if value.is_negative() {
        return Err(Box::new(Located {
            error: PointsError::NegativeMultiplier { path: display_path(&path), value, line: None },
            path,
        }));
    }
    Ok(())
}

fn positive(path: Vec<String>, value: Decimal) -> Checked<()> {
    if value <= Decimal::ZERO {
        return Err(invalid(path, value, "a number above 0"));
    }
    Ok(())
}

fn unknown_category(path: Vec<String>, name: &str) -> Box<Located> {
    Box::new(Located {
        error: PointsError::UnknownCategory { name: name.to_owned(), path: display_path(&path), line: None },
        path,
    })
}

fn check_curve(currency: &str, curve: &[CurvePoint]) -> Checked<()> {
    let mut previous: Option<Decimal> = None;
    for (i, point) in curve.iter().enumerate() {
        let at = |field: &str| seg(&[currency, "latency_curve", &i.to_string(), field]);
        non_negative(at("factor"), point.factor)?;
        if point.latency_s.is_negative() || previous.is_some_and(|p| point.latency_s <= p) {
            return Err(invalid(at("latency_s"), point.latency_s, "latencies of 0 or more, strictly increasing"));
        }
        previous = Some(point.latency_s);
    }
    Ok(())
}

fn check_pattern(path: Vec<String>, pattern: &str) -> Checked<()> {
    let stem = pattern.strip_suffix('*').unwrap_or(pattern);
    if stem.is_empty() || stem.contains('*') {
        return Err(invalid(path, pattern, "a registry type, or a non-empty prefix followed by a single trailing *"));
    }
    Ok(())
}

/// Validates `data` into a [`RuleSet`], resolving minimum GPUs in `catalogue`.
pub(crate) fn build(data: RuleData, catalogue: &GpuCatalogue) -> Checked<RuleSet> {
    if data.name.trim().is_empty() {
        return Err(invalid(seg(&["name"]), &data.name, "a non-empty name"));
    }

    // ------------------------------------------------------------ waifu
    let w = &data.waifu;
    for (field, v) in [("width", w.unit.width), ("height", w.unit.height), ("steps", w.unit.steps)] {
        if v == 0 {
            return Err(invalid(seg(&["waifu", "unit", field]), v, "a whole number above 0"));
        }
    }
    positive(seg(&["waifu", "timeout_s"]), w.timeout_s)?;
    check_curve("waifu", &w.latency_curve)?;
    let mut min_gpus = BTreeMap::new();
    for (name, cat) in &w.categories {
        let at = |field: &str| seg(&["waifu", "categories", name, field]);
        non_negative(at("multiplier"), cat.multiplier)?;
        for (field, v) in [("max_width", cat.max_width), ("max_height", cat.max_height), ("max_steps", cat.max_steps)] {
            if v == Some(0) {
                return Err(invalid(at(field), 0, "a whole number above 0"));
            }
        }
        if let Some(t) = cat.timeout_s {
            positive(at("timeout_s"), t)?;
        }
        let mut gpus: Vec<Gpu> = Vec::new();
        for (i, gpu_name) in cat.min_gpu.iter().enumerate() {
            let gpu = catalogue.lookup(gpu_name).map_err(|_| {
                invalid(seg(&["waifu", "categories", name, "min_gpu", &i.to_string()]), gpu_name, "a GPU name from the catalogue")
            })?;
            gpus.push(gpu.clone());
        }
        min_gpus.insert(name.clone(), gpus);
    }
    let mut reference = Decimal::ONE;
    if let Some(cat) = &w.unit.category {
        let path = seg(&["waifu", "unit", "category"]);
        let found = w.categories.get(cat).ok_or_else(|| unknown_category(path.clone(), cat))?;
        positive(path, found.multiplier)?;
        reference = found.multiplier;
    }
    let px = u128::from(w.unit.width) * u128::from(w.unit.height) * u128::from(w.unit.steps);
    let waifu_divisor = px * reference.millionths().unsigned_abs() as u128;

    let mut exact_types = BTreeMap::new();
    let mut prefix_types = Vec::new();
    let mut add_type = |path: Vec<String>, pattern: &str, target: Target| -> Checked<()> {
        check_pattern(path.clone(), pattern)?;
        let clash = match pattern.strip_suffix('*') {
            Some(prefix) => {
                let clash = prefix_types.iter().any(|(p, _): &(String, Target)| p == prefix);
                prefix_types.push((prefix.to_owned(), target));
                clash
            }
            None => exact_types.insert(pattern.to_owned(), target).is_some(),
        };
        if clash {
            return Err(invalid(path, pattern, "each registry type mapped once, to an image category or to LLMs"));
        }
        Ok(())
    };
    for (pattern, cat) in &w.types {
        let path = seg(&["waifu", "types", pattern]);
        if !w.categories.contains_key(cat) {
            return Err(unknown_category(path, cat));
        }
        add_type(path, pattern, Target::Image(cat.clone()))?;
    }

    // ------------------------------------------------------------ llama
    let l = &data.llama;
    if l.unit.tokens == 0 {
        return Err(invalid(seg(&["llama", "unit", "tokens"]), 0, "a whole number above 0"));
    }
    positive(seg(&["llama", "timeout_s"]), l.timeout_s)?;
    check_curve("llama", &l.latency_curve)?;
    for (id, model) in &l.models {
        non_negative(seg(&["llama", "models", id, "multiplier"]), model.multiplier)?;
    }
    let mut reference = Decimal::ONE;
    if let Some(model) = &l.unit.model {
        let path = seg(&["llama", "unit", "model"]);
        let found = l
            .models
            .get(model)
            .ok_or_else(|| invalid(path.clone(), model, "a model id listed under [llama.models]"))?;
        positive(path, found.multiplier)?;
        reference = found.multiplier;
    }
    let llama_divisor = u128::from(l.unit.tokens) * reference.millionths().unsigned_abs() as u128;
    for (i, pattern) in l.types.iter().enumerate() {
        add_type(seg(&["llama", "types", &i.to_string()]), pattern, Target::Llm)?;
    }
    prefix_types.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));

    let mut set = RuleSet { data, exact_types, prefix_types, waifu_divisor, llama_divisor, min_gpus };

    // ------------------------------------------------------------ model types
    for (id, ty) in &set.data.model_types {
        if set.target_of(ty).is_none() {
            return Err(invalid(
                seg(&["model_types", id]),
                ty,
                "a registry type mapped under [waifu.types] or llama.types",
            ));
        }
    }

    // ------------------------------------------------------------ boosts
    let b = &set.data.boost;
    if b.gpus_per_nft == 0 {
        return Err(invalid(seg(&["boost", "gpus_per_nft"]), 0, "a whole number above 0"));
    }
    for (i, tier) in b.nft_tiers.iter().enumerate() {
        let at = |field: &str| seg(&["boost", "nft_tiers", &i.to_string(), field]);
        non_negative(at("multiplier"), tier.multiplier)?;
        if tier.min_nfts == 0 {
            return Err(invalid(at("min_nfts"), 0, "1 or more (holding no NFT is no tier)"));
        }
        if tier.max_nfts.is_some_and(|m| m < tier.min_nfts) {
            return Err(invalid(at("max_nfts"), tier.max_nfts.unwrap_or(0), "max_nfts at least min_nfts"));
        }
        for earlier in &b.nft_tiers[..i] {
            let overlap = tier.max_nfts.is_none_or(|m| m >= earlier.min_nfts)
                && earlier.max_nfts.is_none_or(|m| m >= tier.min_nfts);
            if overlap {
                let path = seg(&["boost", "nft_tiers", &i.to_string()]);
                return Err(Box::new(Located {
                    error: PointsError::OverlappingTiers {
                        first: earlier.range_text(),
                        second: tier.range_text(),
                        path: display_path(&path),
                        line: None,
                    },
                    path,
                }));
            }
        }
    }

    // ------------------------------------------------------------ phases
    let mut ids = BTreeSet::new();
    let mut previous_end: Option<Option<i64>> = None;
    for (i, phase) in set.data.phases.iter().enumerate() {
        let at = |field: &str| seg(&["phases", &i.to_string(), field]);
        if phase.id.trim().is_empty() || !ids.insert(phase.id.as_str()) {
            return Err(invalid(at("id"), &phase.id, "a non-empty id used by one phase only"));
        }
        if phase.end_unix_s.is_some_and(|e| e <= phase.start_unix_s) {
            return Err(invalid(at("end_unix_s"), phase.end_unix_s.unwrap_or(0), "an end after the start"));
        }
        match previous_end {
            Some(None) => {
                return Err(invalid(at("start_unix_s"), phase.start_unix_s, "no phase after an open-ended one"));
            }
            Some(Some(end)) if phase.start_unix_s < end => {
                return Err(invalid(at("start_unix_s"), phase.start_unix_s, "phases in order, each starting at or after the previous end"));
            }
            _ => {}
        }
        previous_end = Some(phase.end_unix_s);
        if let Some(e) = &phase.emission {
            for (field, v) in [("waifu", e.waifu), ("llama", e.llama)] {
                if let Some(v) = v {
                    non_negative(seg(&["phases", &i.to_string(), "emission", field]), v)?;
                }
            }
        }
    }
    set.min_gpus.retain(|_, v| !v.is_empty());
    Ok(set)
}

impl RuleSet {
    /// Validates rule-set data built in code (errors carry no line).
    pub fn from_data(data: RuleData) -> Result<Self> {
        build(data, GpuCatalogue::builtin()?).map_err(|l| l.error)
    }
}
