//! The Stable Diffusion text-to-image engine (SD 1.5 and SDXL): load a checkpoint, run a job
//! the way the reference miner's diffusers pipelines do.
//!
//! A job is: both prompts through the text encoder(s) (`[negative, positive]`), initial latents
//! drawn from torch's seeded CPU generator, then per step the UNet on the doubled batch,
//! classifier-free guidance `uncond + g * (text - uncond)` and one step of the job's
//! [`Scheduler`] (any [`SchedulerKind`]: DPM-Solver++ 2M SDE Karras, the network's, Euler, Euler
//! ancestral or DDIM; the stochastic ones draw their noise from the same generator), and
//! finally the VAE decode of `latents / scaling_factor`, mapped to 8-bit pixels as diffusers' PIL
//! output is. Latents, guidance and the scheduler stay in f32 whatever dtype the models run in.
//!
//! The families differ in the conditioning: SD 1.5 attends to CLIP ViT-L's last hidden state
//! (prompts padded with the end token); SDXL to the penultimate hidden states of CLIP ViT-L and
//! OpenCLIP ViT-bigG side by side (the second padded with `!`, id 0), and adds bigG's pooled
//! projection and the time ids `[height, width, 0, 0, height, width]` (original size, crop
//! corner, target size) through the UNet's `add_embedding`. SDXL's VAE runs in f32 on every
//! device, as diffusers upcasts it (it overflows in f16).
//!
//! LoRAs ([`Lora`], kohya or diffusers / peft key style) are merged into the text encoders and UNet with
//! [`ImageEngine::set_lora`].
//!
//! [`ImageEngine::set_vae`] swaps in the registry's VAE override.
//!
//! Prompts: by default ([`ImageEngine::generate`], [`PromptEncoding::LongPromptWeighting`]) the
//! engine tokenizes with the real CLIP tokenizer and weights and chunks prompts as the reference
//! miner's long-prompt-weighting pipelines do (`lpw.rs`, [`ImageEngine::encode_prompts`]); a
//! caller with its own ids uses [`PromptEncoding::TokenIds`] (cut to 77 positions, no weights).
//!
//! The registry's composites (a LoRA over a named base at its `default_weight`) load in one
//! call with [`ImageEngine::load_composite`], or switch over one loaded base with
//! [`super::Composites`].

mod lpw;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use super::checkpoint::{
    self, LoraHook, LoraSeen, MissingSlot, Rename, SafetensorsFile, prefixed, renamed_shape,
};
use super::clip_text::ClipTextEncoder;
use super::detect::{ComponentShapes, SdArchitecture, SdFamily, Shapes};
use super::job::{
    GeneratedImage, ImageJob, ImageTimings, MAX_IMAGE_SIDE, PromptTokenizer, encode_png,
};
use super::ldm_names::{self, Lookup};
use super::lora::{Lora, LoraScale};
use super::noise::{NoiseDType, NoiseSource, TorchCpuGenerator};
use super::scheduler::{DEFAULT_SCHEDULER_CONFIG, Scheduler, SchedulerKind};
use super::unet::Unet;
use crate::device::DeviceSpec;
use crate::error::{InferenceError, Result};

/// SD 1.5's VAE latent scaling (`scaling_factor`).
pub const SD15_VAE_SCALE: f64 = 0.18215;
/// SDXL's VAE latent scaling (`scaling_factor`).
pub const SDXL_VAE_SCALE: f64 = 0.13025;
/// CLIP's end-of-text token, which SD 1.5's tokenizer (and SDXL's first) also pads with.
pub const CLIP_END_TOKEN: u32 = 49407;
/// What SDXL's second tokenizer pads with: `!`.
pub const OPEN_CLIP_PAD_TOKEN: u32 = 0;

const UNET_PREFIX: &str = "model.diffusion_model.";
const VAE_PREFIX: &str = "first_stage_model.";
/// Where SD 1.5 and SDXL single files keep the first text encoder (transformers' names).
const CLIP_PREFIXES: [&str; 2] = [
    "cond_stage_model.transformer.",
    "conditioner.embedders.0.transformer.",
];
const OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// How a job's prompts become the text conditioning.
#[derive(Clone, Copy)]
pub enum PromptEncoding<'a> {
    /// The reference's long-prompt weighting with the embedded CLIP tokenizer
    /// ([`ImageEngine::encode_prompts`]): what the network's miners run.
    LongPromptWeighting,
    /// The caller's own token ids, cut to the encoder's 77 positions, no weighting
    /// ([`ImageEngine::encode_token_ids`]).
    TokenIds(&'a dyn PromptTokenizer),
}

impl std::fmt::Debug for PromptEncoding<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LongPromptWeighting => f.write_str("LongPromptWeighting"),
            Self::TokenIds(_) => f.write_str("TokenIds(..)"),
        }
    }
}

/// A loaded Stable Diffusion model.
pub struct ImageEngine {
    arch: SdArchitecture,
    clip: ClipTextEncoder,
    clip2: Option<ClipTextEncoder>,
    unet: Unet,
    vae: AutoEncoderKL,
    device: Device,
    dtype: DType,
    vae_dtype: DType,
    source: PathBuf,
    /// The base weights, kept mapped so that LoRAs can be swapped without reopening them.
    parts: Components,
    lora: Option<(Arc<Lora>, LoraScale)>,
}

impl std::fmt::Debug for ImageEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageEngine")
            .field("source", &self.source)
            .field("arch", &self.arch)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

/// The text conditioning of a batch of prompts.
#[derive(Debug, Clone)]
pub struct TextConditioning {
    /// What the UNet attends to: `(batch, 77, context_dim)`, f32.
    pub context: Tensor,
    /// SDXL's pooled projection `(batch, projection)`, f32.
    pub pooled: Option<Tensor>,
}

/// The names of one component inside a file: a prefix away from the file's names.
struct Prefixed<'a> {
    file: &'a SafetensorsFile,
    prefix: &'static str,
}

impl Shapes for Prefixed<'_> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.file.shape(&format!("{}{name}", self.prefix))
    }

    fn names(&self) -> Vec<String> {
        self.file
            .names()
            .filter_map(|n| n.strip_prefix(self.prefix).map(str::to_owned))
            .collect()
    }
}

/// A component's tensors as its modules name them, through a [`Rename`] (probed only).
struct Renamed<'a> {
    file: &'a SafetensorsFile,
    rename: &'a Rename,
}

impl Shapes for Renamed<'_> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        renamed_shape(self.file, self.rename, name)
    }

    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One component: its file and how its names are found there.
struct Part {
    file: Arc<SafetensorsFile>,
    rename: Rename,
}

/// The files and renames of the components.
struct Components {
    unet: Part,
    vae: Part,
    clip: Part,
    clip2: Option<Part>,
}

/// The first text encoder's names in a single file: `text_model.…` under one of the prefixes.
fn clip_rename(file: &SafetensorsFile) -> Option<Rename> {
    let probe = "text_model.embeddings.token_embedding.weight";
    for prefix in CLIP_PREFIXES {
        if file.contains(&format!("{prefix}{probe}")) {
            return Some(prefixed(prefix));
        }
    }
    // Checkpoints saved with transformers before 4.31 lack `text_model.`.
    let old = CLIP_PREFIXES[0];
    file.contains(&format!("{old}embeddings.token_embedding.weight"))
        .then(|| {
            let rename: Rename = Arc::new(move |n: &str| {
                let n = n.strip_prefix("text_model.")?;
                Some(Lookup::plain(format!("{old}{n}")))
            });
            rename
        })
}

impl ImageEngine {
    /// Loads a single-file checkpoint in the LDM / A1111 layout (f32, f16 or bf16
    /// safetensors), SD 1.5 or SDXL, memory-mapped, its architecture read from its tensors.
    ///
    /// # Errors
    /// [`InferenceError::Io`], [`InferenceError::MalformedSafetensors`],
    /// [`InferenceError::TruncatedFile`] for a file that is not a whole safetensors file;
    /// [`InferenceError::UnknownCheckpointLayout`] when it is not an SD checkpoint;
    /// [`InferenceError::UnrecognisedArchitecture`] when its shapes make no SD model;
    /// [`InferenceError::MissingTensor`] naming a tensor the model needs and the file lacks;
    /// the device's errors.
    pub fn load_checkpoint(path: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        let path = path.as_ref();
        let file = Arc::new(SafetensorsFile::open(path)?);
        let layout_error = |problem: String| InferenceError::UnknownCheckpointLayout {
            path: path.to_owned(),
            problem,
        };
        if !file.contains(&format!("{UNET_PREFIX}input_blocks.0.0.weight")) {
            let sample: Vec<&str> = file.names().take(3).collect();
            return Err(layout_error(format!(
                "no tensor {UNET_PREFIX}input_blocks.0.0.weight (an LDM UNet); found {sample:?}…"
            )));
        }
        let clip_rename = clip_rename(&file).ok_or_else(|| {
            layout_error(format!(
                "no CLIP text encoder ({}text_model.embeddings.token_embedding.weight)",
                CLIP_PREFIXES[0]
            ))
        })?;
        let has_open_clip = file.names().any(|n| n.starts_with(OPEN_CLIP_PREFIX));
        let open_clip_rename: Rename = Arc::new(|n| {
            ldm_names::open_clip(n).map(|l| Lookup {
                key: format!("{OPEN_CLIP_PREFIX}{}", l.key),
                ..l
            })
        });
        let clip2_shapes = Renamed {
            file: &file,
            rename: &open_clip_rename,
        };
        let arch = ComponentShapes {
            unet: &Prefixed {
                file: &file,
                prefix: UNET_PREFIX,
            },
            vae: &Prefixed {
                file: &file,
                prefix: VAE_PREFIX,
            },
            clip: &Renamed {
                file: &file,
                rename: &clip_rename,
            },
            clip2: has_open_clip.then_some(&clip2_shapes as &dyn Shapes),
            ldm: true,
            source: path,
        }
        .detect()?;
        let layout = arch.unet_layout();
        let levels = arch.vae_channels.len();
        let part = |rename| Part {
            file: Arc::clone(&file),
            rename,
        };
        let components = Components {
            unet: part(Arc::new(move |n| {
                ldm_names::unet(n, &layout).map(|k| Lookup::plain(format!("{UNET_PREFIX}{k}")))
            })),
            vae: part(Arc::new(move |n| {
                ldm_names::vae(n, levels).map(|k| Lookup::plain(format!("{VAE_PREFIX}{k}")))
            })),
            clip: part(clip_rename),
            clip2: has_open_clip.then(|| part(open_clip_rename)),
        };
        Self::build(arch, components, path, device)
    }

    /// Loads a diffusers-layout folder (`unet/`, `vae/`, `text_encoder/`, and for SDXL
    /// `text_encoder_2/`, with safetensors weights, `.fp16.safetensors` variants too); the
    /// `config.json` files are not read, the architecture comes from the tensors as for single
    /// files.
    ///
    /// # Errors
    /// As [`ImageEngine::load_checkpoint`]; [`InferenceError::Io`] names a component file that
    /// is absent.
    pub fn load_diffusers(dir: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        let dir = dir.as_ref();
        let path_of = |sub: &str, stem: &str| {
            let plain = dir.join(sub).join(format!("{stem}.safetensors"));
            let fp16 = dir.join(sub).join(format!("{stem}.fp16.safetensors"));
            if !plain.exists() && fp16.exists() {
                fp16
            } else {
                plain
            }
        };
        let open = |sub: &str, stem: &str| -> Result<Arc<SafetensorsFile>> {
            Ok(Arc::new(SafetensorsFile::open(&path_of(sub, stem))?))
        };
        let unet = open("unet", "diffusion_pytorch_model")?;
        let vae = open("vae", "diffusion_pytorch_model")?;
        let clip = open("text_encoder", "model")?;
        let clip2 = if dir.join("text_encoder_2").exists() {
            Some(open("text_encoder_2", "model")?)
        } else {
            None
        };
        let same = || prefixed("");
        let unchanged = same();
        let clip2_shapes = clip2.as_ref().map(|file| Renamed {
            file,
            rename: &unchanged,
        });
        let arch = ComponentShapes {
            unet: &Prefixed {
                file: &unet,
                prefix: "",
            },
            vae: &Prefixed {
                file: &vae,
                prefix: "",
            },
            clip: &Renamed {
                file: &clip,
                rename: &unchanged,
            },
            clip2: clip2_shapes.as_ref().map(|s| s as &dyn Shapes),
            ldm: false,
            source: dir,
        }
        .detect()?;
        let part = |file| Part {
            file,
            rename: same(),
        };
        let components = Components {
            unet: part(unet),
            vae: part(vae),
            clip: part(clip),
            clip2: clip2.map(part),
        };
        Self::build(arch, components, dir, device)
    }

    fn build(
        arch: SdArchitecture,
        parts: Components,
        source: &Path,
        device: DeviceSpec,
    ) -> Result<Self> {
        let device = device.open()?;
        // f16 on GPUs as the reference miner runs; the CPU has no fast f16 kernels.
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        };
        let vae_dtype = match arch.family {
            SdFamily::Sd15 => dtype,
            SdFamily::Sdxl => DType::F32,
        };
        let (clip, clip2, unet) = Self::build_adapted(&arch, &parts, source, &device, dtype, None)?;
        let missing: MissingSlot = Arc::new(Mutex::new(None));
        let vb = checkpoint::var_builder(
            &parts.vae.file,
            &parts.vae.rename,
            &missing,
            None,
            vae_dtype,
            &device,
        );
        let vae = AutoEncoderKL::new(vb, 3, 3, arch.vae_config())
            .map_err(|e| checkpoint::load_error(source, "VAE", &missing, e))?;
        Ok(Self {
            arch,
            clip,
            clip2,
            unet,
            vae,
            device,
            dtype,
            vae_dtype,
            source: source.to_owned(),
            parts,
            lora: None,
        })
    }

    /// The modules a LoRA adapts (text encoders and UNet), with `lora` merged in.
    fn build_adapted(
        arch: &SdArchitecture,
        parts: &Components,
        source: &Path,
        device: &Device,
        dtype: DType,
        lora: Option<(&Arc<Lora>, LoraScale)>,
    ) -> Result<(ClipTextEncoder, Option<ClipTextEncoder>, Unet)> {
        let missing: MissingSlot = Arc::new(Mutex::new(None));
        let seen = Arc::new(Mutex::new(LoraSeen::default()));
        let fail = |component, source_error| {
            checkpoint::load_error(source, component, &missing, source_error)
        };
        let hook = |prefix: &'static str| {
            lora.map(|(lora, scale)| LoraHook {
                lora: Arc::clone(lora),
                prefix,
                scale: if prefix == "lora_unet_" {
                    scale.unet
                } else {
                    scale.text_encoders
                },
                seen: Arc::clone(&seen),
            })
        };
        let vb = |part: &Part, prefix| {
            checkpoint::var_builder(
                &part.file,
                &part.rename,
                &missing,
                hook(prefix),
                dtype,
                device,
            )
        };
        let (te1, te2) = match arch.family {
            SdFamily::Sd15 => ("lora_te_", "lora_te2_"),
            SdFamily::Sdxl => ("lora_te1_", "lora_te2_"),
        };
        let clip =
            ClipTextEncoder::new(vb(&parts.clip, te1), &arch.clip).map_err(|e| fail("CLIP", e))?;
        let clip2 = match (&parts.clip2, &arch.clip2) {
            (Some(part), Some(dims)) => Some(
                ClipTextEncoder::new(vb(part, te2), dims).map_err(|e| fail("OpenCLIP bigG", e))?,
            ),
            _ => None,
        };
        let unet = Unet::new(vb(&parts.unet, "lora_unet_"), arch).map_err(|e| fail("UNet", e))?;
        if let Some((lora, _)) = lora {
            let seen = seen.lock().map_err(|_| InferenceError::LoraMismatch {
                path: lora.path().to_owned(),
                problem: "LoRA bookkeeping poisoned".into(),
            })?;
            let unmatched: Vec<&str> = lora
                .modules()
                .filter(|m| !seen.merged.contains(*m))
                .collect();
            if !unmatched.is_empty() {
                let misfit = unmatched
                    .iter()
                    .filter(|m| seen.misfits.contains(**m))
                    .count();
                // Say which family the LoRA was made for where its tensors tell.
                let mut hint = String::new();
                if let Some(width) = lora.context_width()
                    && width != arch.context_dim
                {
                    hint = format!(
                        "; its cross-attention reads {width}-wide text embeddings, this \
                         model's {} (SD 1.5: 768, SDXL: 2048)",
                        arch.context_dim
                    );
                }
                if lora.adapts_second_text_encoder() && arch.clip2.is_none() {
                    hint.push_str("; it adapts a second text encoder, which SD 1.5 lacks");
                }
                return Err(InferenceError::LoraMismatch {
                    path: lora.path().to_owned(),
                    problem: format!(
                        "{} of its {} adapters fit no weight of this {:?} model ({misfit} by \
                         shape, the others by name), e.g. {}{hint}",
                        unmatched.len(),
                        lora.modules().count(),
                        arch.family,
                        unmatched[0]
                    ),
                });
            }
        }
        Ok((clip, clip2, unet))
    }

    /// Merges `lora` into the text encoders and the UNet at `scale` (for a network job,
    /// [`LoraScale::reference`] of the registry's `default_weight`), replacing any LoRA merged
    /// before; `None` takes it out. The modules are rebuilt from the memory-mapped base
    /// checkpoint, which is not read again from disk.
    ///
    /// # Errors
    /// [`InferenceError::LoraMismatch`] when an adapter of the file fits no weight of this
    /// model (an SD 1.5 LoRA on SDXL, say); [`InferenceError::InvalidSampling`] for a scale
    /// that is not finite. The engine keeps its previous weights on error.
    pub fn set_lora(&mut self, lora: Option<(Arc<Lora>, LoraScale)>) -> Result<()> {
        if let Some((_, scale)) = &lora
            && !scale.is_finite()
        {
            let value = if scale.unet.is_finite() { scale.text_encoders } else { scale.unet };
            return Err(InferenceError::InvalidSampling {
                name: "lora_weight",
                value,
                expected: "a finite number",
            });
        }
        let (clip, clip2, unet) = Self::build_adapted(
            &self.arch,
            &self.parts,
            &self.source,
            &self.device,
            self.dtype,
            lora.as_ref().map(|(l, s)| (l, *s)),
        )?;
        self.clip = clip;
        self.clip2 = clip2;
        self.unet = unet;
        self.lora = lora;
        Ok(())
    }

    /// Replaces the checkpoint's VAE by the one in `path` (the registry's `vae` override: a
    /// safetensors file in LDM names, with or without `first_stage_model.`, or in diffusers
    /// names); `None` puts the checkpoint's own VAE back.
    ///
    /// # Errors
    /// The safetensors errors of [`ImageEngine::load_checkpoint`];
    /// [`InferenceError::UnknownCheckpointLayout`] when the file holds no VAE decoder;
    /// [`InferenceError::MissingTensor`] or [`InferenceError::Load`] when it does not fit this
    /// model's VAE. The engine keeps its previous VAE on error.
    pub fn set_vae(&mut self, path: Option<&Path>) -> Result<()> {
        let missing: MissingSlot = Arc::new(Mutex::new(None));
        let (part, source) = match path {
            None => (
                Part {
                    file: Arc::clone(&self.parts.vae.file),
                    rename: Arc::clone(&self.parts.vae.rename),
                },
                self.source.clone(),
            ),
            Some(path) => {
                let file = Arc::new(SafetensorsFile::open(path)?);
                let levels = self.arch.vae_channels.len();
                let rename: Rename = if file.contains("decoder.up_blocks.0.resnets.0.conv1.weight")
                {
                    prefixed("")
                } else {
                    let prefix = if file.contains(&format!("{VAE_PREFIX}decoder.conv_in.weight")) {
                        VAE_PREFIX
                    } else if file.contains("decoder.conv_in.weight") {
                        ""
                    } else {
                        return Err(InferenceError::UnknownCheckpointLayout {
                            path: path.to_owned(),
                            problem: "no VAE decoder (decoder.conv_in.weight)".into(),
                        });
                    };
                    Arc::new(move |n| {
                        ldm_names::vae(n, levels).map(|k| Lookup::plain(format!("{prefix}{k}")))
                    })
                };
                (Part { file, rename }, path.to_owned())
            }
        };
        let vb = checkpoint::var_builder(
            &part.file,
            &part.rename,
            &missing,
            None,
            self.vae_dtype,
            &self.device,
        );
        self.vae = AutoEncoderKL::new(vb, 3, 3, self.arch.vae_config())
            .map_err(|e| checkpoint::load_error(&source, "VAE", &missing, e))?;
        Ok(())
    }

    /// The LoRA merged now and its scale.
    pub fn lora(&self) -> Option<(&Lora, LoraScale)> {
        self.lora.as_ref().map(|(l, s)| (l.as_ref(), *s))
    }

    /// The architecture read from the weights.
    pub fn architecture(&self) -> &SdArchitecture {
        &self.arch
    }

    /// The dtype the UNet and text encoders run in (f32 on the CPU, f16 on CUDA).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The scheduler of a job that names none: the reference's for the family
    /// ([`SchedulerKind::SD15_DEFAULT`], DPM-Solver++ 2M SDE Karras;
    /// [`SchedulerKind::SDXL_DEFAULT`], Euler as in SDXL base's configuration).
    pub fn default_sampler(&self) -> SchedulerKind {
        match self.arch.family {
            SdFamily::Sd15 => SchedulerKind::SD15_DEFAULT,
            SdFamily::Sdxl => SchedulerKind::SDXL_DEFAULT,
        }
    }

    /// The VAE's latent scaling of this family.
    pub fn vae_scale(&self) -> f64 {
        match self.arch.family {
            SdFamily::Sd15 => SD15_VAE_SCALE,
            SdFamily::Sdxl => SDXL_VAE_SCALE,
        }
    }

    /// `prompts` as an id tensor of the encoder's positions: cut to fit (keeping the end token
    /// last) and padded with `pad`.
    fn id_tensor(&self, prompts: &[Vec<u32>], pad: u32) -> Result<Tensor> {
        let positions = self.arch.clip.positions;
        let vocab = self.arch.clip.vocab;
        let mut ids = Vec::with_capacity(prompts.len() * positions);
        for prompt in prompts {
            if let Some(&token_id) = prompt.iter().find(|&&id| id as usize >= vocab) {
                return Err(InferenceError::UnknownToken {
                    token_id,
                    vocab_size: vocab,
                });
            }
            let kept = prompt.len().min(positions);
            ids.extend_from_slice(&prompt[..kept]);
            if prompt.len() > positions {
                let last = ids.len() - 1;
                ids[last] = CLIP_END_TOKEN;
            }
            ids.extend(std::iter::repeat_n(pad, positions - kept));
        }
        Tensor::from_vec(ids, (prompts.len(), positions), &self.device).map_err(|source| {
            InferenceError::Tensor {
                context: "token ids".into(),
                source,
            }
        })
    }

    /// The text conditioning of each prompt's token ids (start token, tokens, end token; the
    /// engine pads and cuts to 77 positions as the family's tokenizers do).
    ///
    /// # Errors
    /// [`InferenceError::UnknownToken`] for an id outside the vocabulary;
    /// [`InferenceError::Forward`] when an encoder fails.
    pub fn encode_token_ids(&self, prompts: &[Vec<u32>]) -> Result<TextConditioning> {
        let forward = |source| InferenceError::Forward {
            step: "text encoder".into(),
            source,
        };
        let ids = self.id_tensor(prompts, CLIP_END_TOKEN)?;
        let out = self.clip.forward(&ids).map_err(forward)?;
        let f32 = |t: Tensor| t.to_dtype(DType::F32).map_err(forward);
        match &self.clip2 {
            None => Ok(TextConditioning {
                context: f32(out.last)?,
                pooled: None,
            }),
            Some(clip2) => {
                let ids2 = self.id_tensor(prompts, OPEN_CLIP_PAD_TOKEN)?;
                let out2 = clip2.forward(&ids2).map_err(forward)?;
                let context =
                    Tensor::cat(&[&out.penultimate, &out2.penultimate], 2).map_err(forward)?;
                Ok(TextConditioning {
                    context: f32(context)?,
                    pooled: out2.pooled.map(f32).transpose()?,
                })
            }
        }
    }

    /// One UNet forward: the noise prediction for `sample` `(batch, 4, h, w)` at `timestep`
    /// with text `context` `(batch, 77, context_dim)`; SDXL also takes the pooled embedding and
    /// the time ids `(batch, 6)`. f32 in and out.
    ///
    /// # Errors
    /// [`InferenceError::Forward`] when the shapes do not fit the model, or SDXL's added
    /// conditioning is missing.
    pub fn unet_forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let run = || {
            let added = match added {
                Some((p, t)) => Some((p.to_dtype(self.dtype)?, t.to_dtype(self.dtype)?)),
                None => None,
            };
            self.unet
                .forward(
                    &sample.to_dtype(self.dtype)?,
                    timestep,
                    &context.to_dtype(self.dtype)?,
                    added.as_ref().map(|(p, t)| (p, t)),
                )?
                .to_dtype(DType::F32)
        };
        run().map_err(|source| InferenceError::Forward {
            step: format!("UNet at timestep {timestep}"),
            source,
        })
    }

    /// The VAE decoder's raw output `(batch, 3, 8h, 8w)` (in [-1, 1] for a good latent, not
    /// clamped) for latents already divided by the scaling factor, in f32.
    ///
    /// # Errors
    /// [`InferenceError::Forward`] when the shapes do not fit the model.
    pub fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
        let run = || {
            self.vae
                .decode(&latents.to_dtype(self.vae_dtype)?)?
                .to_dtype(DType::F32)
        };
        run().map_err(|source| InferenceError::Forward {
            step: "VAE decode".into(),
            source,
        })
    }

    /// Runs a job as the reference miner does: long-prompt weighting with the CLIP tokenizer,
    /// the reference's noise (torch's CPU generator seeded with the job's seed).
    ///
    /// # Errors
    /// The job's own errors ([`ImageJob::checked`]), [`InferenceError::Prompt`] for a prompt
    /// that cannot be weighted, and [`InferenceError::Forward`] when a model fails.
    pub fn generate(&self, job: &ImageJob) -> Result<GeneratedImage> {
        let mut noise = TorchCpuGenerator::new(job.seed);
        self.generate_with(
            job,
            PromptEncoding::LongPromptWeighting,
            &mut noise,
            &mut |_, _| {},
        )
    }

    /// Runs a job on the caller's own token ids (no weighting, 77 positions) with the
    /// reference's noise.
    ///
    /// # Errors
    /// As [`ImageEngine::generate`], and the tokenizer's.
    pub fn generate_with_ids(
        &self,
        job: &ImageJob,
        tokenizer: &dyn PromptTokenizer,
    ) -> Result<GeneratedImage> {
        let mut noise = TorchCpuGenerator::new(job.seed);
        self.generate_with(
            job,
            PromptEncoding::TokenIds(tokenizer),
            &mut noise,
            &mut |_, _| {},
        )
    }

    /// Runs a job with `prompts` encoded as asked, drawing from `noise`, calling
    /// `on_step(step, latents)` after every denoising step with the f32 latents.
    ///
    /// # Errors
    /// As [`ImageEngine::generate`], and a [`PromptEncoding::TokenIds`] tokenizer's.
    pub fn generate_with(
        &self,
        job: &ImageJob,
        prompts: PromptEncoding<'_>,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<GeneratedImage> {
        let job = job.checked()?;
        let started = Instant::now();
        let tensor = |context: &str| {
            let context = context.to_owned();
            move |source| InferenceError::Tensor { context, source }
        };
        let guided = job.guidance_scale > 1.0;
        let text = match prompts {
            PromptEncoding::LongPromptWeighting => {
                self.encode_prompts(&job.prompt, guided.then_some(job.neg_prompt.as_str()))?
            }
            PromptEncoding::TokenIds(tokenizer) => {
                let positive = tokenizer.token_ids(&job.prompt)?;
                let prompts = if guided {
                    vec![tokenizer.token_ids(&job.neg_prompt)?, positive]
                } else {
                    vec![positive]
                };
                self.encode_token_ids(&prompts)?
            }
        };
        let batch = text.context.dim(0).map_err(tensor("text conditioning"))?;
        let (h, w) = (job.height as f32, job.width as f32);
        let time_ids = match text.pooled {
            None => None,
            Some(_) => Some(
                Tensor::from_vec(
                    [h, w, 0.0, 0.0, h, w].repeat(batch),
                    (batch, 6),
                    &self.device,
                )
                .map_err(tensor("time ids"))?,
            ),
        };
        let added = text.pooled.as_ref().zip(time_ids.as_ref());
        let encoded = Instant::now();

        // Every scheduler draws what it draws (ancestral and SDE noise, Euler's unused tensor)
        // from `noise` in diffusers' order, in the dtype of the f32 guided prediction.
        let kind = job.sampler.unwrap_or_else(|| self.default_sampler());
        let mut scheduler = Scheduler::new(kind, DEFAULT_SCHEDULER_CONFIG, job.steps)?;
        let factor = self.arch.vae_scale_factor();
        let shape = [
            1,
            self.arch.latent_channels,
            job.height as usize / factor,
            job.width as usize / factor,
        ];
        if shape[2] == 0 || shape[3] == 0 {
            let (name, value) = if shape[2] == 0 {
                ("height", job.height)
            } else {
                ("width", job.width)
            };
            return Err(InferenceError::InvalidImageSize {
                name,
                value,
                max: MAX_IMAGE_SIDE,
            });
        }
        let mut latents = (noise.randn_tensor(&shape, NoiseDType::F32, &self.device)?
            * f64::from(scheduler.init_noise_sigma()))
        .map_err(tensor("initial latents"))?;
        for (step, t) in scheduler.timesteps().into_iter().enumerate() {
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0).map_err(tensor("guidance batch"))?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(&input)?;
            let eps = self.unet_forward(&input, t, &text.context, added)?;
            let eps = if guided {
                let guide = || {
                    let uncond = eps.i(0..1)?;
                    let text = eps.i(1..2)?;
                    &uncond + ((&text - &uncond)? * job.guidance_scale)?
                };
                guide().map_err(tensor("classifier-free guidance"))?
            } else {
                eps
            };
            latents = scheduler.step(&eps, &latents, noise)?;
            on_step(step, &latents);
        }
        let denoised = Instant::now();

        let image =
            self.vae_decode(&(&latents / self.vae_scale()).map_err(tensor("latent scaling"))?)?;
        let pixels = || {
            // diffusers: (x / 2 + 0.5).clamp(0, 1), then PIL's (x * 255).round() in f32.
            let image = ((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
            image
                .i(0)?
                .permute((1, 2, 0))?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let rgb: Vec<u8> = pixels()
            .map_err(tensor("image conversion"))?
            .into_iter()
            .map(|v| (v * 255.0).round_ties_even() as u8)
            .collect();
        let png = encode_png(&rgb, job.width, job.height)?;
        let latents = latents
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(tensor("final latents"))?;
        let finished = Instant::now();
        Ok(GeneratedImage {
            png,
            rgb,
            width: job.width,
            height: job.height,
            steps: job.steps,
            seed: job.seed,
            latents,
            timings: ImageTimings {
                encode: encoded - started,
                denoise: denoised - encoded,
                decode: finished - denoised,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    /// A miner shares one engine between its job threads.
    #[test]
    fn engine_and_lora_are_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::ImageEngine>();
        shareable::<super::Lora>();
    }
}
