//! Reading rule sets: the shipped presets, TOML or JSON text, and files.

use std::path::Path;

use super::validate::{build, Located};
use super::{locate, RuleData, RuleSet};
use crate::catalogue::GpuCatalogue;
use crate::error::{PointsError, Result};

/// The preset names: `seed` (the table of the seed's mining page, the default) and `later`
/// (the later published table: dolphin 0.5x on 24 GB, Hermes 3 and Theia added,
/// openhermes-2-pro dropped, Flux at 0).
pub const PRESETS: &[&str] = &["seed", "later"];

/// The default preset: the seed's table.
pub const DEFAULT_PRESET: &str = "seed";

const SEED_TOML: &str = include_str!("../../data/rules/seed.toml");
const LATER_TOML: &str = include_str!("../../data/rules/later.toml");

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

fn with_line(located: Located, line: impl FnOnce(&[String]) -> Option<usize>) -> PointsError {
    let found = line(&located.path);
    located.error.with_line(found)
}

impl RuleSet {
    /// A shipped preset by name (see [`PRESETS`]).
    ///
    /// ```
    /// use heurist_points::RuleSet;
    /// let rules = RuleSet::preset("seed")?;
    /// assert_eq!(rules.name(), "seed");
    /// assert!(RuleSet::preset("season-9").is_err());
    /// # Ok::<(), heurist_points::PointsError>(())
    /// ```
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "seed" => Self::from_toml_str(SEED_TOML),
            "later" => Self::from_toml_str(LATER_TOML),
            _ => Err(PointsError::UnknownPreset { name: name.to_owned(), known: PRESETS }),
        }
    }

    /// The TOML text of a shipped preset, e.g. to start a new rule set from.
    pub fn preset_text(name: &str) -> Result<&'static str> {
        match name {
            "seed" => Ok(SEED_TOML),
            "later" => Ok(LATER_TOML),
            _ => Err(PointsError::UnknownPreset { name: name.to_owned(), known: PRESETS }),
        }
    }

    /// A rule set from TOML text. Errors name the line of the offending item.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let data: RuleData = toml::from_str(text).map_err(|e| PointsError::RuleToml {
            line: e.span().map(|s| line_of(text, s.start)),
            source: e,
        })?;
        build(data, GpuCatalogue::builtin()?).map_err(|l| with_line(*l, |p| locate::toml_line(text, p)))
    }

    /// A rule set from JSON text. Errors name the line of the offending item.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let data: RuleData =
            serde_json::from_str(text).map_err(|e| PointsError::RuleJson { line: e.line(), source: e })?;
        build(data, GpuCatalogue::builtin()?).map_err(|l| with_line(*l, |p| locate::json_line(text, p)))
    }

    /// A rule set from a `.toml` or `.json` file, read at run time.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let read = || std::fs::read_to_string(path).map_err(|source| PointsError::RuleFile { path: path.to_owned(), source });
        match ext.as_deref() {
            Some("toml") => Self::from_toml_str(&read()?),
            Some("json") => Self::from_json_str(&read()?),
            _ => Err(PointsError::RuleFileExtension { path: path.to_owned() }),
        }
    }

    /// A preset name or a file path, as a `--rules PRESET|FILE` flag takes it: a name in
    /// [`PRESETS`] is the preset, anything else is a file.
    pub fn load(preset_or_path: &str) -> Result<Self> {
        if PRESETS.contains(&preset_or_path) {
            Self::preset(preset_or_path)
        } else {
            Self::from_path(preset_or_path)
        }
    }

    /// The rule set as TOML text (multipliers as numbers).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(&self.data).map_err(|e| PointsError::InvalidRule {
            path: String::new(),
            value: e.to_string(),
            expected: "data that TOML can hold",
            line: None,
        })
    }
}
