//! LoRA adapters in the kohya / civitai and the diffusers / peft key styles, merged into the
//! weights as they are loaded.
//!
//! A kohya file names each adapted module by its diffusers / transformers path with `_` for `.`
//! (`lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`,
//! `lora_te_text_model_encoder_layers_0_self_attn_q_proj`; SDXL: `lora_te1_`, `lora_te2_`) and
//! stores `.lora_down.weight` (rank x in, or rank x in x kh x kw for convolutions),
//! `.lora_up.weight` (out x rank) and `.alpha`. A diffusers file (what `save_lora_weights`
//! writes, peft's names) keeps the dotted path under its component, `unet.`, `text_encoder.`,
//! `text_encoder_2.`, with `.lora_A.weight` (down) and `.lora_B.weight` (up), or in older files
//! `.lora.down.weight` / `.lora.up.weight`; both are indexed under the kohya names, so the rest
//! of the engine sees one style. The merged weight is `W + scale * alpha / rank * up @ down`,
//! `scale` being the job's LoRA weight (the registry's `default_weight`, diffusers'
//! `fuse_lora(lora_scale=…)`); a file without `.alpha` means `alpha = rank` (a factor of 1),
//! which is also how diffusers loads a peft file that stores no alphas.
//!
//! The merge happens in the checkpoint backend ([`super::checkpoint`]) when a module asks for its
//! weight, so the base file is never copied; taking a LoRA out, or switching to another, rebuilds
//! the modules from the same memory-mapped base. Every adapter in the file must land on a weight
//! of its shape, or loading fails ([`InferenceError::LoraMismatch`]): an SD 1.5 LoRA on an SDXL
//! model does not silently do nothing.
//!
//! How strongly each part is adapted is a [`LoraScale`]. The network's jobs use
//! [`LoraScale::reference`]: the reference miner loads a composite's LoRA with
//! `load_lora_weights` (no fuse) and passes the job's weight only as
//! `cross_attention_kwargs={"scale": w}`, which its vendored pipelines hand to the UNet alone,
//! so the text encoders keep their adapters at 1.0. [`LoraScale::fused`] is diffusers'
//! `fuse_lora(lora_scale=w)`, every part at `w`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::checkpoint::SafetensorsFile;
use crate::error::{InferenceError, Result};

/// The scale of a LoRA's adapters in each part of the model: the merged weight is
/// `W + scale * alpha / rank * up @ down` with the part's scale.
///
/// ```
/// use heurist_inference::image::LoraScale;
///
/// // A composite's `default_weight` of 0.8, as the reference miner applies it.
/// let scale = LoraScale::reference(0.8);
/// assert_eq!((scale.unet, scale.text_encoders), (0.8, 1.0));
/// assert_eq!(LoraScale::fused(0.8).text_encoders, 0.8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraScale {
    /// The UNet's adapters.
    pub unet: f64,
    /// Both text encoders' adapters.
    pub text_encoders: f64,
}

impl LoraScale {
    /// A job's LoRA weight as the reference miner applies it: `cross_attention_kwargs={"scale":
    /// weight}` scales the UNet's adapters; the text encoders' stay at 1.0.
    pub fn reference(weight: f64) -> Self {
        Self {
            unet: weight,
            text_encoders: 1.0,
        }
    }

    /// Every part at `weight`, as diffusers' `fuse_lora(lora_scale=weight)` merges it.
    pub fn fused(weight: f64) -> Self {
        Self {
            unet: weight,
            text_encoders: weight,
        }
    }

    /// Whether both scales are finite numbers.
    pub fn is_finite(&self) -> bool {
        self.unet.is_finite() && self.text_encoders.is_finite()
    }
}

impl std::fmt::Display for LoraScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UNet {}, text encoders {}", self.unet, self.text_encoders)
    }
}

/// One adapted module.
#[derive(Debug, Clone)]
struct Adapter {
    down: String,
    up: String,
    alpha: Option<String>,
}

/// A LoRA file (kohya or diffusers key style), memory-mapped.
#[derive(Debug)]
pub struct Lora {
    path: PathBuf,
    file: SafetensorsFile,
    adapters: BTreeMap<String, Adapter>,
    /// Whether the file is in diffusers' key style, whose `text_encoder.` serves either family.
    diffusers_style: bool,
}

/// The pairs of suffixes (down, up) that name one adapter's matrices, by key style.
const DIFFUSERS_PAIRS: [(&str, &str); 3] = [
    // peft, what diffusers' `save_lora_weights` writes since 0.22
    (".lora_A.weight", ".lora_B.weight"),
    // diffusers' LoRACompatibleLinear / Conv layers (0.18 to 0.21)
    (".lora.down.weight", ".lora.up.weight"),
    // transformers' text-encoder patches of the same era
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
];

/// The component prefixes of diffusers-style keys and the kohya prefixes they stand for. The
/// first text encoder is stored as `lora_te_` (SD 1.5's name) and found under SDXL's
/// `lora_te1_` too ([`Lora::resolve`]): a diffusers file does not say which family it is for.
const DIFFUSERS_COMPONENTS: [(&str, &str); 3] = [
    ("unet.", "lora_unet_"),
    ("text_encoder.", "lora_te_"),
    ("text_encoder_2.", "lora_te2_"),
];

/// The kohya name of a diffusers-style module path (`unet.down_blocks.0…to_q`), and its old
/// attention-processor form (`…attn1.processor.to_q_lora`) mapped onto the module it adapts.
fn diffusers_module(path: &str) -> Option<String> {
    // Longest prefix first: `text_encoder_2.` also starts with `text_encoder`.
    let (component, kohya) = DIFFUSERS_COMPONENTS
        .iter()
        .rev()
        .find(|(c, _)| path.starts_with(c))?;
    let module = &path[component.len()..];
    let module = match module.split_once(".processor.") {
        Some((attn, proj)) => {
            let proj = proj.strip_suffix("_lora")?;
            let proj = if proj == "to_out" { "to_out.0" } else { proj };
            format!("{attn}.{proj}")
        }
        None => module.to_owned(),
    };
    Some(format!("{kohya}{}", module.replace('.', "_")))
}

impl Lora {
    /// Opens a LoRA file and indexes its adapters, in either key style: kohya / civitai
    /// (`lora_unet_…​.lora_down.weight`, `lora_te_…`, `lora_te1_…`, `lora_te2_…`) or diffusers /
    /// peft (`unet.…​.lora_A.weight` / `lora_B`, the older `.lora.down` / `.lora.up` and
    /// `.processor.to_q_lora.down`, `text_encoder.…`, `text_encoder_2.…`). An `.alpha` next to
    /// an adapter scales it by `alpha / rank`; without one the scale is 1, as diffusers loads
    /// a file that stores no alphas.
    ///
    /// # Errors
    /// The safetensors errors of [`super::ImageEngine::load_checkpoint`];
    /// [`InferenceError::LoraFormat`] when a down matrix has no up matrix, the file is a DoRA
    /// (a magnitude vector per module, which a plain merge would get wrong), a diffusers key
    /// names no known component, or the file holds no adapter at all.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = SafetensorsFile::open(path)?;
        let format = |problem: String| InferenceError::LoraFormat {
            path: path.to_owned(),
            problem,
        };
        let mut adapters = BTreeMap::new();
        let mut diffusers_style = false;
        for name in file.names() {
            if name.contains("lora_magnitude_vector") || name.ends_with(".dora_scale") {
                return Err(format(format!(
                    "{name}: a DoRA (weight-decomposed LoRA), which is not supported"
                )));
            }
            let (module, up, alpha) =
                if let Some(module) = name.strip_suffix(".lora_down.weight") {
                    (
                        module.to_owned(),
                        format!("{module}.lora_up.weight"),
                        format!("{module}.alpha"),
                    )
                } else if let Some((base, up_suffix)) = DIFFUSERS_PAIRS
                    .iter()
                    .find_map(|(down, up)| name.strip_suffix(down).map(|b| (b, *up)))
                {
                    let module = diffusers_module(base).ok_or_else(|| {
                        format(format!(
                            "{name}: not under `unet.`, `text_encoder.` or `text_encoder_2.`"
                        ))
                    })?;
                    diffusers_style = true;
                    (module, format!("{base}{up_suffix}"), format!("{base}.alpha"))
                } else {
                    continue;
                };
            if !file.contains(&up) {
                return Err(format(format!("{name} has no {up}")));
            }
            let alpha = file.contains(&alpha).then_some(alpha);
            let adapter = Adapter {
                down: name.to_owned(),
                up,
                alpha,
            };
            if let Some(before) = adapters.insert(module.clone(), adapter) {
                return Err(format(format!(
                    "{name} and {} adapt the same module {module}",
                    before.down
                )));
            }
        }
        if adapters.is_empty() {
            let sample: Vec<&str> = file.names().take(3).collect();
            return Err(format(format!(
                "no LoRA adapters (kohya `<module>.lora_down.weight` or diffusers \
                 `unet.<module>.lora_A.weight`); found {sample:?}…"
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            adapters,
            diffusers_style,
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

    /// The width of the text embeddings its UNet cross-attention adapters read (the input
    /// size of an `attn2.to_k` / `to_v` down matrix), when it has one: 768 for SD 1.5, 2048 for
    /// SDXL. Tells which family a LoRA was made for.
    pub fn context_width(&self) -> Option<usize> {
        self.adapters.iter().find_map(|(module, adapter)| {
            let cross = module.starts_with("lora_unet_")
                && (module.ends_with("attn2_to_k") || module.ends_with("attn2_to_v"));
            cross
                .then(|| self.file.shape(&adapter.down))
                .flatten()
                .and_then(|shape| shape.get(1).copied())
        })
    }

    /// Whether it adapts a second text encoder (SDXL's OpenCLIP bigG).
    pub fn adapts_second_text_encoder(&self) -> bool {
        self.adapters.keys().any(|m| m.starts_with("lora_te2_"))
    }

    /// The name under which the file adapts this kohya-named module, if it does: the name
    /// itself, or for SDXL's first text encoder (`lora_te1_…`) the `text_encoder.` adapter of
    /// a diffusers-style file, which does not say its family.
    pub(crate) fn resolve<'a>(&'a self, module: &str) -> Option<&'a str> {
        let alias = module
            .strip_prefix("lora_te1_")
            .filter(|_| self.diffusers_style)
            .map(|m| format!("lora_te_{m}"));
        [Some(module.to_owned()), alias]
            .into_iter()
            .flatten()
            .find_map(|m| self.adapters.get_key_value(&m).map(|(k, _)| k.as_str()))
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
