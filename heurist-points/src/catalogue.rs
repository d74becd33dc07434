//! The GPU catalogue: names as `nvidia-smi` and CUDA report them, VRAM, dense FP16 TFLOPs,
//! a rank order, and eligibility for an image category (minimum GPU) or an LLM (VRAM).
//!
//! The catalogue is data (`data/gpus.toml`, compiled in and parsed once); a reward service
//! may load its own with [`GpuCatalogue::from_toml_str`]. A name is matched after
//! normalising case, `-`/`_`/space, and a leading `NVIDIA ` or `GeForce `; failing that,
//! memory tokens (`80GB`, `HBM3`) are dropped and the rest must name exactly one card that
//! was sold with that memory. Anything else is [`PointsError::UnknownGpu`]: a reward must
//! never rest on a guessed card (laptop parts, for one, are different chips).
//!
//! Rank: dense FP16 TFLOPs, then VRAM, then name. Minimum GPU of a category: a card is
//! eligible if its series has a listed minimum and it ranks at or above it; a card of a
//! series with no listed minimum (the seed predates the RTX 50 series) is eligible if it
//! ranks at or above the lowest listed minimum.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::decimal::Decimal;
use crate::error::{PointsError, Result};

const BUILTIN_TOML: &str = include_str!("../data/gpus.toml");

/// One GPU model of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// The name `nvidia-smi` prints, e.g. `NVIDIA GeForce RTX 4060 Ti`.
    pub name: String,
    /// Other names the same card reports (memory or form-factor spellings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// `geforce-30`, `geforce-40`, `geforce-50` or `datacenter`.
    pub series: String,
    /// The memory sizes sold under this name, in GB, smallest first.
    pub vram_gb: Vec<u32>,
    /// Peak dense FP16 tensor TFLOPs (FP16 accumulate, no sparsity).
    pub fp16_tflops: Decimal,
}

impl Gpu {
    /// The smallest memory size sold under this name: what a name alone guarantees.
    pub fn min_vram_gb(&self) -> u32 {
        self.vram_gb.iter().copied().min().unwrap_or(0)
    }

    /// The rank order: dense FP16 TFLOPs, then guaranteed VRAM, then name.
    pub fn cmp_rank(&self, other: &Gpu) -> Ordering {
        self.fp16_tflops
            .cmp(&other.fp16_tflops)
            .then_with(|| self.min_vram_gb().cmp(&other.min_vram_gb()))
            .then_with(|| self.name.cmp(&other.name))
    }

    /// Whether this card meets a minimum-GPU list (empty: any card does). See the module
    /// docs for how series without a listed minimum are treated.
    pub fn meets_minimum(&self, minimum: &[&Gpu]) -> bool {
        if minimum.is_empty() {
            return true;
        }
        let same_series = minimum.iter().filter(|m| m.series == self.series).min_by(|a, b| a.cmp_rank(b));
        let bar = match same_series {
            Some(m) => *m,
            None => match minimum.iter().min_by(|a, b| a.cmp_rank(b)) {
                Some(m) => *m,
                None => return true,
            },
        };
        self.cmp_rank(bar) != Ordering::Less
    }

    /// Whether this card has at least `vram_gb` GB under every memory size sold with its name.
    pub fn has_vram(&self, vram_gb: u32) -> bool {
        self.min_vram_gb() >= vram_gb
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    gpu: Vec<Gpu>,
}

/// A set of GPUs with name lookup and ranking.
#[derive(Clone, Debug)]
pub struct GpuCatalogue {
    gpus: Vec<Gpu>,
    /// Normalised name or alias → index.
    exact: HashMap<String, usize>,
    /// Normalised name with memory tokens removed → indices.
    loose: HashMap<String, Vec<usize>>,
}

static BUILTIN: OnceLock<GpuCatalogue> = OnceLock::new();

impl GpuCatalogue {
    /// The catalogue compiled into this crate (`data/gpus.toml`), parsed on first use.
    pub fn builtin() -> Result<&'static GpuCatalogue> {
        if let Some(c) = BUILTIN.get() {
            return Ok(c);
        }
        let parsed = Self::from_toml_str(BUILTIN_TOML)?;
        Ok(BUILTIN.get_or_init(|| parsed))
    }

    /// A catalogue from TOML text of the shape of `data/gpus.toml` (`[[gpu]]` tables).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let file: CatalogueFile = toml::from_str(text).map_err(|e| PointsError::RuleToml {
            line: e.span().map(|s| crate::rules::line_of(text, s.start)),
            source: e,
        })?;
        Self::new(file.gpu)
    }

    /// A catalogue of the given cards. Names and aliases must be unique after normalising.
    pub fn new(gpus: Vec<Gpu>) -> Result<Self> {
        let mut exact = HashMap::new();
        let mut loose: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, gpu) in gpus.iter().enumerate() {
            if gpu.vram_gb.is_empty() || gpu.vram_gb.contains(&0) {
                return Err(PointsError::InvalidCatalogue {
                    name: gpu.name.clone(),
                    problem: "vram_gb must list at least one non-zero size",
                });
            }
            if gpu.fp16_tflops <= Decimal::ZERO {
                return Err(PointsError::InvalidCatalogue {
                    name: gpu.name.clone(),
                    problem: "fp16_tflops must be above zero",
                });
            }
            for name in std::iter::once(&gpu.name).chain(&gpu.aliases) {
                let key = normalise(name);
                if exact.insert(key.clone(), i).is_some() {
                    return Err(PointsError::InvalidCatalogue {
                        name: name.clone(),
                        problem: "this name (after normalising) is listed twice",
                    });
                }
                let (base, _) = strip_memory(&key);
                let entry = loose.entry(base).or_default();
                if !entry.contains(&i) {
                    entry.push(i);
                }
            }
        }
        Ok(Self { gpus, exact, loose })
    }

    /// Every card, in file order.
    pub fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }

    /// Every card, weakest first.
    pub fn ranked(&self) -> Vec<&Gpu> {
        let mut v: Vec<&Gpu> = self.gpus.iter().collect();
        v.sort_by(|a, b| a.cmp_rank(b));
        v
    }

    /// The card a reported name denotes.
    ///
    /// ```
    /// use heurist_points::GpuCatalogue;
    /// let cat = GpuCatalogue::builtin()?;
    /// assert_eq!(cat.lookup("NVIDIA A100-SXM4-80GB")?.min_vram_gb(), 80);
    /// assert_eq!(cat.lookup("geforce rtx 4060 ti")?.name, "NVIDIA GeForce RTX 4060 Ti");
    /// assert!(cat.lookup("NVIDIA GeForce RTX 4090 Laptop GPU").is_err());
    /// # Ok::<(), heurist_points::PointsError>(())
    /// ```
    pub fn lookup(&self, name: &str) -> Result<&Gpu> {
        let unknown = || PointsError::UnknownGpu { name: name.to_owned() };
        let key = normalise(name);
        if let Some(&i) = self.exact.get(&key) {
            return self.gpus.get(i).ok_or_else(unknown);
        }
        let (base, memory_gb) = strip_memory(&key);
        let candidates = self.loose.get(&base).ok_or_else(unknown)?;
        let mut matching = candidates
            .iter()
            .filter_map(|&i| self.gpus.get(i))
            .filter(|g| memory_gb.is_none_or(|m| g.vram_gb.contains(&m)));
        match (matching.next(), matching.next()) {
            // Without a memory token the base must still have come from a real name of
            // this card; with one, it must be a size the card was sold with.
            (Some(g), None) if memory_gb.is_some() || candidates.len() == 1 && self.base_is_name(&base) => Ok(g),
            _ => Err(unknown()),
        }
    }

    /// Whether some listed name of a card, memory tokens and all, is exactly `base`.
    fn base_is_name(&self, base: &str) -> bool {
        self.exact.contains_key(base)
    }
}

/// Lowercase; `-` and `_` as spaces; single spaces; without a leading `nvidia ` or `geforce `.
pub(crate) fn normalise(name: &str) -> String {
    let spaced: String = name
        .chars()
        .map(|c| if c == '-' || c == '_' { ' ' } else { c.to_ascii_lowercase() })
        .collect();
    let mut words: Vec<&str> = spaced.split_whitespace().collect();
    for prefix in ["nvidia", "geforce"] {
        if words.first() == Some(&prefix) {
            words.remove(0);
        }
    }
    words.join(" ")
}

/// Drops memory tokens (`80gb`, `hbm3`, `hbm3e`, `hbm2e`...) and returns the size named, if any.
fn strip_memory(key: &str) -> (String, Option<u32>) {
    let mut size = None;
    let mut kept = Vec::new();
    for word in key.split(' ') {
        if let Some(n) = word.strip_suffix("gb").and_then(|d| d.parse::<u32>().ok()) {
            size = Some(n);
        } else if word.starts_with("hbm") || word == "gddr6" || word == "gddr6x" || word == "gddr7" {
        } else {
            kept.push(word);
        }
    }
    (kept.join(" "), size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_and_every_name_finds_itself() {
        let cat = GpuCatalogue::builtin().unwrap();
        assert!(cat.gpus().len() >= 40);
        for g in cat.gpus() {
            assert_eq!(&cat.lookup(&g.name).unwrap().name, &g.name);
            for a in &g.aliases {
                assert_eq!(&cat.lookup(a).unwrap().name, &g.name, "{a}");
            }
        }
    }

    #[test]
    fn normalising() {
        assert_eq!(normalise("NVIDIA GeForce RTX 4060 Ti"), "rtx 4060 ti");
        assert_eq!(normalise("  nvidia  A100-SXM4-80GB "), "a100 sxm4 80gb");
        assert_eq!(strip_memory("h100 80gb hbm3"), ("h100".to_owned(), Some(80)));
    }

    #[test]
    fn memory_tokens_pick_a_variant_or_nothing() {
        let cat = GpuCatalogue::builtin().unwrap();
        // Not a name NVIDIA prints, but it says which A100 it is.
        assert_eq!(cat.lookup("NVIDIA A100 PCIe 80GB").unwrap().min_vram_gb(), 80);
        assert_eq!(cat.lookup("NVIDIA A100 PCIe 40GB").unwrap().min_vram_gb(), 40);
        assert_eq!(cat.lookup("NVIDIA GeForce RTX 4060 Ti 16GB").unwrap().name, "NVIDIA GeForce RTX 4060 Ti");
        // "H100" alone could be 756 or 989 TFLOPs: not guessed.
        assert!(cat.lookup("NVIDIA H100").is_err());
        assert!(cat.lookup("NVIDIA A100").is_err());
        // A size the card was never sold with.
        assert!(cat.lookup("NVIDIA GeForce RTX 4090 48GB").is_err());
    }
}
