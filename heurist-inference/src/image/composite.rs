//! The registry's composites: a LoRA over a named base checkpoint, run at the registry's
//! `default_weight` (types `composite15` and `compositexl` of `models.json`), applied as the
//! reference miner applies it ([`LoraScale::reference`]: the UNet at the weight, the text
//! encoders at 1.0).
//!
//! [`CompositeSpec`] reads the fields of a registry entry that matter here (it deserializes from
//! the entry's JSON as the registry stores it; this crate does not depend on
//! `heurist-protocol`). [`Composites`] keeps one base loaded and switches between the
//! composites over it with [`ImageEngine::set_lora`], which rebuilds the adapted modules from the
//! memory-mapped base without reading it again; [`ImageEngine::load_composite`] is the one-call
//! form for a single composite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::detect::SdFamily;
use super::engine::ImageEngine;
use super::lora::{Lora, LoraScale};
use crate::device::DeviceSpec;
use crate::error::{InferenceError, Result};

/// A composite as the registry describes it.
///
/// ```
/// use heurist_inference::image::CompositeSpec;
///
/// let entry = r#"{"name": "PepeXL", "base": "AAMXLAnimeMix", "type": "compositexl",
///                 "default_weight": 0.8, "file_url": "https://example.invalid/DD-pepe-v2.safetensors"}"#;
/// let spec: CompositeSpec = serde_json::from_str(entry)?;
/// assert_eq!((spec.base.as_str(), spec.default_weight), ("AAMXLAnimeMix", Some(0.8)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompositeSpec {
    /// The model id jobs name.
    pub name: String,
    /// The registry type: `composite15` or `compositexl`.
    #[serde(rename = "type")]
    pub model_type: String,
    /// The base checkpoint's name.
    pub base: String,
    /// The LoRA weight (diffusers' `lora_scale`).
    #[serde(default)]
    pub default_weight: Option<f64>,
}

impl CompositeSpec {
    /// The family its type asks of the base.
    ///
    /// # Errors
    /// [`InferenceError::Composite`] for a type that is no SD composite.
    pub fn family(&self) -> Result<SdFamily> {
        match self.model_type.as_str() {
            "composite15" => Ok(SdFamily::Sd15),
            "compositexl" => Ok(SdFamily::Sdxl),
            other => Err(self.error(format!(
                "type {other:?} is no image composite (composite15, compositexl)"
            ))),
        }
    }

    /// The LoRA weight: `default_weight`, which must be a finite number.
    ///
    /// # Errors
    /// [`InferenceError::Composite`] when it is missing or not finite.
    pub fn weight(&self) -> Result<f64> {
        match self.default_weight {
            Some(w) if w.is_finite() => Ok(w),
            Some(w) => Err(self.error(format!("default_weight {w} is not a finite number"))),
            None => Err(self.error("no default_weight".into())),
        }
    }

    fn error(&self, problem: String) -> InferenceError {
        InferenceError::Composite {
            composite: self.name.clone(),
            problem,
        }
    }
}

impl ImageEngine {
    /// Loads the composite's base checkpoint and merges its LoRA at the registry's weight, in
    /// one call.
    ///
    /// # Errors
    /// The errors of [`ImageEngine::load_checkpoint`], [`Lora::open`] and
    /// [`ImageEngine::set_lora`]; [`InferenceError::Composite`] when the spec's type is no
    /// composite, its weight is missing, or the base is of the other family.
    pub fn load_composite(
        spec: &CompositeSpec,
        base_path: impl AsRef<Path>,
        lora_path: impl AsRef<Path>,
        device: DeviceSpec,
    ) -> Result<Self> {
        let mut composites = Composites::load(&spec.base, base_path, device)?;
        composites.select(spec, lora_path)?;
        Ok(composites.engine)
    }
}

/// One base checkpoint and the composites over it, switched without reloading the base.
#[derive(Debug)]
pub struct Composites {
    engine: ImageEngine,
    base: String,
    loras: HashMap<PathBuf, Arc<Lora>>,
    current: Option<String>,
}

impl Composites {
    /// Loads the base checkpoint named `base` (its registry name) from `path`.
    ///
    /// # Errors
    /// The errors of [`ImageEngine::load_checkpoint`].
    pub fn load(base: &str, path: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        Ok(Self {
            engine: ImageEngine::load_checkpoint(path, device)?,
            base: base.to_owned(),
            loras: HashMap::new(),
            current: None,
        })
    }

    /// The base's registry name.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The composite merged now (`None`: the bare base).
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The engine as it is now.
    pub fn engine(&self) -> &ImageEngine {
        &self.engine
    }

    /// Makes the engine run `spec`: its LoRA file (opened once, kept mapped) merged at its
    /// `default_weight`, replacing the composite merged before. Selecting the composite merged
    /// now does nothing.
    ///
    /// # Errors
    /// [`InferenceError::Composite`] when `spec` names another base, is of the other family
    /// or has no weight; [`Lora::open`]'s and [`ImageEngine::set_lora`]'s errors. The engine
    /// keeps the composite it had on error.
    pub fn select(&mut self, spec: &CompositeSpec, lora_path: impl AsRef<Path>) -> Result<&ImageEngine> {
        if spec.base != self.base {
            return Err(spec.error(format!(
                "its base is {:?}, the loaded base is {:?}",
                spec.base, self.base
            )));
        }
        let family = spec.family()?;
        let loaded = self.engine.architecture().family;
        if family != loaded {
            return Err(spec.error(format!(
                "type {} needs a {family:?} base, {:?} is {loaded:?}",
                spec.model_type, self.base
            )));
        }
        let weight = spec.weight()?;
        if self.current.as_deref() == Some(spec.name.as_str()) {
            return Ok(&self.engine);
        }
        let path = lora_path.as_ref().to_owned();
        let lora = match self.loras.get(&path) {
            Some(lora) => Arc::clone(lora),
            None => {
                let lora = Arc::new(Lora::open(&path)?);
                self.loras.insert(path, Arc::clone(&lora));
                lora
            }
        };
        self.engine.set_lora(Some((lora, LoraScale::reference(weight))))?;
        self.current = Some(spec.name.clone());
        Ok(&self.engine)
    }

    /// Takes any composite out: the bare base, for jobs that name it.
    ///
    /// # Errors
    /// [`ImageEngine::set_lora`]'s.
    pub fn select_base(&mut self) -> Result<&ImageEngine> {
        if self.current.is_some() {
            self.engine.set_lora(None)?;
            self.current = None;
        }
        Ok(&self.engine)
    }
}
