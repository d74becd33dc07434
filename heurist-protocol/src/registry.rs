//! The network's model registry: `models.json`, `lora.json`, `vae.json`.
//!
//! Entries are base checkpoints (`sd15`, `sdxl10`, `flux-dev`), composites (`composite15`,
//! `compositexl`: a LoRA over a named `base`), LoRAs (`lora`, with the family in
//! `base_model`), VAEs, and LLMs (`llm*` types, with `hf_id` / `hf_branch` / `bits`). The
//! registry grows: unknown fields are kept in `extra`, unknown types in
//! [`ModelType::Other`]. A copy of the network's files as of this crate's release is bundled
//! ([`Registry::bundled`]); a miner loads the live ones with [`Registry::from_slices`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::decode;
use crate::error::{ProtocolError, Result};

/// What kind of model an entry is (the registry's `type`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelType {
    /// Stable Diffusion 1.5 checkpoint.
    Sd15,
    /// Stable Diffusion XL checkpoint.
    Sdxl10,
    /// An SD 1.5 LoRA over a named base.
    Composite15,
    /// An SDXL LoRA over a named base.
    CompositeXl,
    /// Flux.1 [dev].
    FluxDev,
    /// A Flux.1 [dev] LoRA.
    FluxDevLora,
    /// A stand-alone LoRA (family in `base_model`).
    Lora,
    /// A VAE.
    Vae,
    /// An LLM; the type string as given (`llm8b16b`, `llm8x7b4b`, ...).
    Llm(String),
    /// A type this crate does not know yet.
    Other(String),
}

impl ModelType {
    /// The registry's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Sd15 => "sd15",
            Self::Sdxl10 => "sdxl10",
            Self::Composite15 => "composite15",
            Self::CompositeXl => "compositexl",
            Self::FluxDev => "flux-dev",
            Self::FluxDevLora => "flux-dev-lora",
            Self::Lora => "lora",
            Self::Vae => "vae",
            Self::Llm(s) | Self::Other(s) => s,
        }
    }

    /// Parses the registry's spelling; never fails (unknown types are kept).
    pub fn parse(s: &str) -> Self {
        match s {
            "sd15" => Self::Sd15,
            "sdxl10" => Self::Sdxl10,
            "composite15" => Self::Composite15,
            "compositexl" => Self::CompositeXl,
            "flux-dev" => Self::FluxDev,
            "flux-dev-lora" => Self::FluxDevLora,
            "lora" => Self::Lora,
            "vae" => Self::Vae,
            s if s.starts_with("llm") => Self::Llm(s.to_owned()),
            s => Self::Other(s.to_owned()),
        }
    }

    /// Whether jobs for this model are image jobs.
    pub fn is_image(&self) -> bool {
        matches!(self, Self::Sd15 | Self::Sdxl10 | Self::Composite15 | Self::CompositeXl | Self::FluxDev | Self::FluxDevLora)
    }
}

impl Serialize for ModelType {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ModelType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// Default job parameters of an image model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelDefaults {
    /// Default width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Default height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Largest width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_width: Option<u32>,
    /// Largest height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
    /// Default negative prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neg_prompt: Option<String>,
    /// Default steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_inference_steps: Option<u32>,
    /// Default guidance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    /// Default seed (-1 or null: random).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One registry entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// The model id jobs name.
    pub name: String,
    /// What it is.
    #[serde(rename = "type")]
    pub model_type: ModelType,
    /// For composites: the base checkpoint's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// For LoRAs: the family (`sd15`, `sdxl10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    /// The VAE to use instead of the checkpoint's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    /// LoRA scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_weight: Option<f64>,
    /// SHA-256 of the file, upper-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// File size in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<f64>,
    /// Where to download the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_url: Option<String>,
    /// `safetensors` dtype (`float16`, `fp8`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// For LLMs: the Hugging Face repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_id: Option<String>,
    /// For LLMs: the branch (GPTQ variants live on branches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_branch: Option<String>,
    /// For LLMs: weight bits (16, 8, 4; 0 = unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    /// Default job parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<ModelDefaults>,
    /// Fields this crate does not know (author, info_url, prices, ...), kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RegistryEntry {
    /// The checksum as 32 bytes, if the entry has a well-formed one.
    pub fn checksum_bytes(&self) -> Option<Result<[u8; 32]>> {
        let c = self.checksum.as_deref().map(str::trim).filter(|c| !c.is_empty())?;
        let mut out = [0u8; 32];
        Some(
            hex::decode_to_slice(c, &mut out)
                .map(|()| out)
                .map_err(|e| ProtocolError::invalid("checksum", c, format!("not 64 hex digits: {e}"))),
        )
    }
}

/// The three registry files, with look-ups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    /// `models.json`: checkpoints, composites, LLMs.
    pub models: Vec<RegistryEntry>,
    /// `lora.json`.
    pub loras: Vec<RegistryEntry>,
    /// `vae.json`.
    pub vaes: Vec<RegistryEntry>,
}

const BUNDLED_MODELS: &str = include_str!("../data/heurist-models/models.json");
const BUNDLED_LORAS: &str = include_str!("../data/heurist-models/lora.json");
const BUNDLED_VAES: &str = include_str!("../data/heurist-models/vae.json");
const BUNDLED_MODELS_2024_07: &str = include_str!("../data/heurist-models/models-2024-07.json");

impl Registry {
    /// The copy of the network's registry bundled with this crate.
    ///
    /// ```
    /// let r = heurist_protocol::Registry::bundled()?;
    /// assert_eq!(r.base_of("PepeXL")?.name, "AAMXLAnimeMix");
    /// # Ok::<(), heurist_protocol::ProtocolError>(())
    /// ```
    pub fn bundled() -> Result<Self> {
        Self::from_slices(BUNDLED_MODELS.as_bytes(), Some(BUNDLED_LORAS.as_bytes()), Some(BUNDLED_VAES.as_bytes()))
    }

    /// The registry as of July 2024, when the LLMs of the seed's points table
    /// (dolphin-2.9-llama3-8b, openhermes-2-pro-mistral-7b, openhermes-mixtral-8x7b-gptq) were
    /// served; the current `models.json` no longer lists them.
    pub fn bundled_2024_07() -> Result<Self> {
        Self::from_slices(BUNDLED_MODELS_2024_07.as_bytes(), Some(BUNDLED_LORAS.as_bytes()), Some(BUNDLED_VAES.as_bytes()))
    }

    /// Adds the entries of `other` whose names this registry does not have yet.
    pub fn extend(&mut self, other: Registry) {
        for (mine, theirs) in [(&mut self.models, other.models), (&mut self.loras, other.loras), (&mut self.vaes, other.vaes)] {
            for e in theirs {
                if !mine.iter().any(|m| m.name == e.name) {
                    mine.push(e);
                }
            }
        }
    }

    /// Parses the three files' contents (LoRAs and VAEs optional).
    pub fn from_slices(models: &[u8], loras: Option<&[u8]>, vaes: Option<&[u8]>) -> Result<Self> {
        let limit = decode::DEFAULT_MAX_BODY_BYTES;
        Ok(Self {
            models: decode::json("models.json", models, limit)?,
            loras: loras.map(|b| decode::json("lora.json", b, limit)).transpose()?.unwrap_or_default(),
            vaes: vaes.map(|b| decode::json("vae.json", b, limit)).transpose()?.unwrap_or_default(),
        })
    }

    /// Parses one file that may hold any kind of entry (sorted into the three lists by type).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|error| ProtocolError::Io { path: path.to_owned(), error })?;
        let what = path.display().to_string();
        let entries: Vec<RegistryEntry> = decode::json(&what, &bytes, decode::DEFAULT_MAX_BODY_BYTES)?;
        let mut r = Self::default();
        for e in entries {
            match e.model_type {
                ModelType::Lora => r.loras.push(e),
                ModelType::Vae => r.vaes.push(e),
                _ => r.models.push(e),
            }
        }
        Ok(r)
    }

    /// Reads `models.json`, and `lora.json` / `vae.json` when present, from a folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Option<Vec<u8>>> {
            let p = dir.join(name);
            match std::fs::read(&p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && name != "models.json" => Ok(None),
                Err(error) => Err(ProtocolError::Io { path: p, error }),
            }
        };
        let models = read("models.json")?.unwrap_or_default();
        let loras = read("lora.json")?;
        let vaes = read("vae.json")?;
        Self::from_slices(&models, loras.as_deref(), vaes.as_deref())
    }

    /// Every entry, models first.
    pub fn entries(&self) -> impl Iterator<Item = &RegistryEntry> {
        self.models.iter().chain(&self.loras).chain(&self.vaes)
    }

    /// The entry named `name` (models, then LoRAs, then VAEs).
    pub fn get(&self, name: &str) -> Result<&RegistryEntry> {
        self.entries()
            .find(|e| e.name == name)
            .ok_or_else(|| ProtocolError::UnknownModel { kind: "model", name: name.to_owned() })
    }

    /// The checkpoint a job for `name` runs on: a composite's `base`, else the entry itself.
    pub fn base_of(&self, name: &str) -> Result<&RegistryEntry> {
        let e = self.get(name)?;
        match (&e.model_type, &e.base) {
            (ModelType::Composite15 | ModelType::CompositeXl | ModelType::FluxDevLora, Some(base)) => self
                .models
                .iter()
                .find(|m| &m.name == base)
                .ok_or_else(|| ProtocolError::UnknownModel { kind: "base model", name: base.clone() }),
            _ => Ok(e),
        }
    }

    /// A LoRA's family (`base_model`, e.g. `sdxl10`), or a composite's base's type.
    pub fn lora_family(&self, name: &str) -> Result<ModelType> {
        let e = self.get(name)?;
        match (&e.model_type, &e.base_model) {
            (ModelType::Lora, Some(bm)) => Ok(ModelType::parse(bm)),
            (ModelType::Composite15 | ModelType::CompositeXl | ModelType::FluxDevLora, _) => {
                Ok(self.base_of(name)?.model_type.clone())
            }
            _ => Err(ProtocolError::UnknownModel { kind: "lora", name: name.to_owned() }),
        }
    }

    /// The VAE entry a model (or its base) names, if any.
    pub fn vae_for(&self, name: &str) -> Result<Option<&RegistryEntry>> {
        let e = self.get(name)?;
        let vae = match &e.vae {
            Some(v) => Some(v),
            None => self.base_of(name)?.vae.as_ref(),
        };
        match vae {
            None => Ok(None),
            Some(v) => self
                .vaes
                .iter()
                .find(|x| &x.name == v)
                .map(Some)
                .ok_or_else(|| ProtocolError::UnknownModel { kind: "vae", name: v.clone() }),
        }
    }

    /// The default job parameters: the entry's own, else its base's.
    pub fn defaults_of(&self, name: &str) -> Result<Option<&ModelDefaults>> {
        let e = self.get(name)?;
        match &e.defaults {
            Some(d) => Ok(Some(d)),
            None => Ok(self.base_of(name)?.defaults.as_ref()),
        }
    }

    /// The expected SHA-256 of `name`'s file, if the registry gives one.
    pub fn checksum_of(&self, name: &str) -> Result<Option<[u8; 32]>> {
        self.get(name)?.checksum_bytes().transpose()
    }
}

/// Where the reference keeps a model file: `<cache_dir>/<name>.safetensors`.
pub fn model_file_path(cache_dir: &Path, name: &str) -> PathBuf {
    cache_dir.join(format!("{name}.safetensors"))
}
