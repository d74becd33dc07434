//! LoRA adapters in the kohya / civitai layout, merged into the weights as they are loaded.
//!
//! A kohya file names each adapted module by its diffusers / transformers path with `_` for `.`
//! (`lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`,
//! `lora_te_text_model_encoder_layers_0_self_attn_q_proj`; SDXL: `lora_te1_`, `lora_te2_`) and
//! stores `.lora_down.weight` (rank x in, or rank x in x kh x kw for convolutions),
//! `.lora_up.weight` (out x rank) and `.alpha`. The merged weight is
//! `W + scale * alpha / rank * up @ down`, `scale` being the job's LoRA weight (the registry's
//! `default_weight`); a file without `.alpha` means `alpha = rank`.
//!
//! The merge happens in the checkpoint backend ([`super::checkpoint`]) when a module asks for its
//! weight, so the base file is never copied; taking a LoRA out, or switching to another, rebuilds
//! the modules from the same memory-mapped base. Every adapter in the file must land on a weight
//! of its shape, or loading fails ([`InferenceError::LoraMismatch`]): an SD 1.5 LoRA on an SDXL
//! model does not silently do nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::checkpoint::SafetensorsFile;
use crate::error::{InferenceError, Result};

/// One adapted module.
#[derive(Debug, Clone)]
struct Adapter {
    down: String,
    up: String,
    alpha: Option<String>,
}

/// A kohya-layout LoRA file, memory-mapped.
#[derive(Debug)]
pub struct Lora {
    path: PathBuf,
    file: SafetensorsFile,
    adapters: BTreeMap<String, Adapter>,
}

impl Lora {
    /// Opens a LoRA file and indexes its adapters.
    ///
    /// # Errors
    /// The safetensors errors of [`super::ImageEngine::load_checkpoint`];
    /// [`InferenceError::LoraFormat`] when a `lora_down` has no `lora_up`, or the file holds no
    /// kohya adapter (diffusers-style LoRA keys are not supported yet).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = SafetensorsFile::open(path)?;
        let format = |problem: String| InferenceError::LoraFormat {
            path: path.to_owned(),
            problem,
        };
        let mut adapters = BTreeMap::new();
        for name in file.names() {
            let Some(module) = name.strip_suffix(".lora_down.weight") else {
                continue;
            };
            let up = format!("{module}.lora_up.weight");
            if !file.contains(&up) {
                return Err(format(format!("{name} has no {up}")));
            }
            let alpha = format!("{module}.alpha");
            let alpha = file.contains(&alpha).then_some(alpha);
            adapters.insert(
                module.to_owned(),
                Adapter {
                    down: name.to_owned(),
                    up,
                    alpha,
                },
            );
        }
        if adapters.is_empty() {
            let sample: Vec<&str> = file.names().take(3).collect();
            return Err(format(format!(
                "no kohya adapters (`<module>.lora_down.weight`); found {sample:?}…"
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            adapters,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kohya names of the adapted modules.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }

    /// Whether the file adapts this (kohya-named) module.
    pub(crate) fn adapts(&self, module: &str) -> bool {
        self.adapters.contains_key(module)
    }

    /// `alpha / rank * up @ down` of a module, in f32, shaped `shape` (the weight's); `None` when
    /// the adapter does not fit a weight of that shape.
    pub(crate) fn delta(
        &self,
        module: &str,
        shape: &[usize],
        device: &Device,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(adapter) = self.adapters.get(module) else {
            return Ok(None);
        };
        let load = |key: &str| {
            self.file
                .tensor(key, device)
                .and_then(|t| t.to_dtype(DType::F32))
        };
        let down = load(&adapter.down)?;
        let up = load(&adapter.up)?;
        let rank = down.dim(0)?;
        let out = up.dim(0)?;
        if up.elem_count() != out * rank || shape.first() != Some(&out) {
            return Ok(None);
        }
        let down = down.flatten_from(1)?;
        if down.elem_count() * out != shape.iter().product::<usize>() * rank {
            return Ok(None);
        }
        let alpha = match &adapter.alpha {
            Some(key) => load(key)?.flatten_all()?.to_vec1::<f32>()?.first().copied(),
            None => None,
        }
        .map_or(1.0, |a| f64::from(a) / rank as f64);
        let delta = up.reshape((out, rank))?.matmul(&down)?;
        Ok(Some((delta.reshape(shape)? * alpha)?))
    }
}
