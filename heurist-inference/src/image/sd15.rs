//! The Stable Diffusion 1.5 text-to-image engine: load a checkpoint, run a job the way the
//! reference miner's diffusers pipeline does.
//!
//! A job is: both prompts through CLIP (`[negative, positive]`, padded with the end token to 77),
//! initial latents drawn from torch's seeded CPU generator, then per step the UNet on the doubled
//! batch, classifier-free guidance `uncond + g * (text - uncond)` and one DPM-Solver++ 2M SDE
//! Karras step (which draws its own noise from the same generator), and finally the VAE decode
//! of `latents / 0.18215`, mapped to 8-bit pixels as diffusers' PIL output is. Latents, guidance
//! and the scheduler stay in f32 whatever dtype the models run in.
//!
//! Not yet here (issue 7): SDXL, LoRA, the VAE override, long prompt weighting (the engine takes
//! token ids of at most 77 positions), other samplers per job.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use super::checkpoint::{self, MissingSlot, Rename, SafetensorsFile};
use super::detect::{ComponentShapes, SdArchitecture, Shapes};
use super::job::{GeneratedImage, ImageJob, ImageTimings, PromptTokenizer, encode_png};
use super::ldm_names;
use super::noise::{NoiseDType, NoiseSource, TorchCpuGenerator};
use super::scheduler::{DEFAULT_SCHEDULER_CONFIG, DpmSolverMultistepScheduler};
use crate::device::DeviceSpec;
use crate::error::{InferenceError, Result};

/// SD 1.5's VAE latent scaling (`scaling_factor`).
pub const SD15_VAE_SCALE: f64 = 0.18215;
/// CLIP's end-of-text token, which SD 1.5's tokenizer also pads with.
pub const CLIP_END_TOKEN: u32 = 49407;

const UNET_PREFIX: &str = "model.diffusion_model.";
const VAE_PREFIX: &str = "first_stage_model.";
const CLIP_PREFIXES: [&str; 2] = [
    "cond_stage_model.transformer.text_model.",
    // Checkpoints saved with transformers before 4.31 lack `text_model.`.
    "cond_stage_model.transformer.",
];

/// A loaded Stable Diffusion 1.5 model.
pub struct ImageEngine {
    arch: SdArchitecture,
    clip: ClipTextTransformer,
    unet: UNet2DConditionModel,
    vae: AutoEncoderKL,
    device: Device,
    dtype: DType,
    source: PathBuf,
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

/// The files and renames of the three components.
struct Components {
    unet: Arc<SafetensorsFile>,
    vae: Arc<SafetensorsFile>,
    clip: Arc<SafetensorsFile>,
    unet_rename: Rename,
    vae_rename: Rename,
    clip_rename: Rename,
}

impl ImageEngine {
    /// Loads a single-file checkpoint in the LDM / A1111 layout (f32, f16 or bf16 safetensors),
    /// memory-mapped, its architecture read from its tensors.
    ///
    /// # Errors
    /// [`InferenceError::Io`], [`InferenceError::MalformedSafetensors`],
    /// [`InferenceError::TruncatedFile`] for a file that is not a whole safetensors file;
    /// [`InferenceError::UnknownCheckpointLayout`] when it is not an SD checkpoint;
    /// [`InferenceError::UnrecognisedArchitecture`] when its shapes make no SD 1.5 model;
    /// [`InferenceError::MissingTensor`] naming a tensor the model needs and the file lacks;
    /// the device's errors.
    pub fn load_checkpoint(path: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        let path = path.as_ref();
        let file = Arc::new(SafetensorsFile::open(path)?);
        if !file.contains(&format!("{UNET_PREFIX}input_blocks.0.0.weight")) {
            let sample: Vec<&str> = file.names().take(3).collect();
            return Err(InferenceError::UnknownCheckpointLayout {
                path: path.to_owned(),
                problem: format!(
                    "no tensor {UNET_PREFIX}input_blocks.0.0.weight (an LDM UNet); found {sample:?}…"
                ),
            });
        }
        if file
            .names()
            .any(|n| n.starts_with("conditioner.embedders."))
        {
            return Err(InferenceError::UnrecognisedArchitecture {
                path: path.to_owned(),
                problem: "an SDXL checkpoint (conditioner.embedders.*); this engine runs SD 1.5"
                    .into(),
            });
        }
        let clip_prefix = CLIP_PREFIXES
            .into_iter()
            .find(|p| file.contains(&format!("{p}embeddings.token_embedding.weight")))
            .ok_or_else(|| InferenceError::UnknownCheckpointLayout {
                path: path.to_owned(),
                problem: format!(
                    "no CLIP text encoder ({}embeddings.token_embedding.weight)",
                    CLIP_PREFIXES[0]
                ),
            })?;
        let arch = ComponentShapes {
            unet: &Prefixed {
                file: &file,
                prefix: UNET_PREFIX,
            },
            vae: &Prefixed {
                file: &file,
                prefix: VAE_PREFIX,
            },
            clip: &Prefixed {
                file: &file,
                prefix: clip_prefix,
            },
            ldm: true,
            source: path,
        }
        .detect()?;
        let layout = arch.unet_layout();
        let levels = arch.vae_channels.len();
        let components = Components {
            unet: Arc::clone(&file),
            vae: Arc::clone(&file),
            clip: Arc::clone(&file),
            unet_rename: Box::new(move |n| {
                ldm_names::unet(n, &layout).map(|k| format!("{UNET_PREFIX}{k}"))
            }),
            vae_rename: Box::new(move |n| {
                ldm_names::vae(n, levels).map(|k| format!("{VAE_PREFIX}{k}"))
            }),
            clip_rename: Box::new(move |n| Some(format!("{clip_prefix}{n}"))),
        };
        Self::build(arch, components, path, device)
    }

    /// Loads a diffusers-layout folder (`unet/`, `vae/`, `text_encoder/` with safetensors
    /// weights, `.fp16.safetensors` variants too); the `config.json` files are not read, the
    /// architecture comes from the tensors as for single files.
    ///
    /// # Errors
    /// As [`ImageEngine::load_checkpoint`]; [`InferenceError::Io`] names a component file that
    /// is absent.
    pub fn load_diffusers(dir: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        let dir = dir.as_ref();
        let open = |sub: &str, stem: &str| -> Result<Arc<SafetensorsFile>> {
            let plain = dir.join(sub).join(format!("{stem}.safetensors"));
            let fp16 = dir.join(sub).join(format!("{stem}.fp16.safetensors"));
            let path = if !plain.exists() && fp16.exists() {
                fp16
            } else {
                plain
            };
            Ok(Arc::new(SafetensorsFile::open(&path)?))
        };
        let unet = open("unet", "diffusion_pytorch_model")?;
        let vae = open("vae", "diffusion_pytorch_model")?;
        let clip = open("text_encoder", "model")?;
        let arch = ComponentShapes {
            unet: &Prefixed {
                file: &unet,
                prefix: "",
            },
            vae: &Prefixed {
                file: &vae,
                prefix: "",
            },
            clip: &Prefixed {
                file: &clip,
                prefix: "text_model.",
            },
            ldm: false,
            source: dir,
        }
        .detect()?;
        let components = Components {
            unet,
            vae,
            clip,
            unet_rename: Box::new(|n| Some(n.to_owned())),
            vae_rename: Box::new(|n| Some(n.to_owned())),
            clip_rename: Box::new(|n| Some(format!("text_model.{n}"))),
        };
        Self::build(arch, components, dir, device)
    }

    fn build(
        arch: SdArchitecture,
        components: Components,
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
        let missing: MissingSlot = Arc::new(Mutex::new(None));
        let fail = |component, source_error| {
            checkpoint::load_error(source, component, &missing, source_error)
        };
        let vb = checkpoint::var_builder(
            &components.clip,
            components.clip_rename,
            &missing,
            dtype,
            &device,
        );
        let clip =
            ClipTextTransformer::new(vb, &arch.clip_config()).map_err(|e| fail("CLIP", e))?;
        let vb = checkpoint::var_builder(
            &components.unet,
            components.unet_rename,
            &missing,
            dtype,
            &device,
        );
        let channels = arch.latent_channels;
        let unet = UNet2DConditionModel::new(vb, channels, channels, false, arch.unet_config())
            .map_err(|e| fail("UNet", e))?;
        let vb = checkpoint::var_builder(
            &components.vae,
            components.vae_rename,
            &missing,
            dtype,
            &device,
        );
        let vae = AutoEncoderKL::new(vb, 3, 3, arch.vae_config()).map_err(|e| fail("VAE", e))?;
        Ok(Self {
            arch,
            clip,
            unet,
            vae,
            device,
            dtype,
            source: source.to_owned(),
        })
    }

    /// The architecture read from the weights.
    pub fn architecture(&self) -> &SdArchitecture {
        &self.arch
    }

    /// The dtype the models run in (f32 on the CPU, f16 on CUDA).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// CLIP's last hidden state (after the final layer norm) for each prompt's token ids,
    /// padded with [`CLIP_END_TOKEN`] to the encoder's positions (or cut, keeping the end
    /// token): `(prompts, 77, hidden)` in f32.
    ///
    /// # Errors
    /// [`InferenceError::UnknownToken`] for an id outside the vocabulary;
    /// [`InferenceError::Forward`] when the encoder fails.
    pub fn encode_token_ids(&self, prompts: &[Vec<u32>]) -> Result<Tensor> {
        let positions = self.arch.clip_positions;
        let mut ids = Vec::with_capacity(prompts.len() * positions);
        for prompt in prompts {
            if let Some(&token_id) = prompt
                .iter()
                .find(|&&id| id as usize >= self.arch.clip_vocab)
            {
                return Err(InferenceError::UnknownToken {
                    token_id,
                    vocab_size: self.arch.clip_vocab,
                });
            }
            let kept = prompt.len().min(positions);
            ids.extend_from_slice(&prompt[..kept]);
            if prompt.len() > positions {
                let last = ids.len() - 1;
                ids[last] = CLIP_END_TOKEN;
            }
            ids.extend(std::iter::repeat_n(CLIP_END_TOKEN, positions - kept));
        }
        let forward = |source| InferenceError::Forward {
            step: "CLIP text encoder".into(),
            source,
        };
        let ids =
            Tensor::from_vec(ids, (prompts.len(), positions), &self.device).map_err(forward)?;
        self.clip
            .forward_with_mask(&ids, usize::MAX)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(forward)
    }

    /// One UNet forward: the noise prediction for `sample` `(batch, 4, h, w)` at `timestep`
    /// with text `context` `(batch, 77, hidden)`, in f32.
    ///
    /// # Errors
    /// [`InferenceError::Forward`] when the shapes do not fit the model.
    pub fn unet_forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        let run = || {
            self.unet
                .forward(
                    &sample.to_dtype(self.dtype)?,
                    timestep,
                    &context.to_dtype(self.dtype)?,
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
                .decode(&latents.to_dtype(self.dtype)?)?
                .to_dtype(DType::F32)
        };
        run().map_err(|source| InferenceError::Forward {
            step: "VAE decode".into(),
            source,
        })
    }

    /// Runs a job with the reference's noise (torch's CPU generator seeded with the job's seed).
    ///
    /// # Errors
    /// The job's own errors ([`ImageJob::checked`]), the tokenizer's, and
    /// [`InferenceError::Forward`] when a model fails.
    pub fn generate(
        &self,
        job: &ImageJob,
        tokenizer: &dyn PromptTokenizer,
    ) -> Result<GeneratedImage> {
        let mut noise = TorchCpuGenerator::new(job.seed);
        self.generate_with(job, tokenizer, &mut noise, &mut |_, _| {})
    }

    /// Runs a job drawing from `noise`, calling `on_step(step, latents)` after every denoising
    /// step with the f32 latents.
    ///
    /// # Errors
    /// As [`ImageEngine::generate`].
    pub fn generate_with(
        &self,
        job: &ImageJob,
        tokenizer: &dyn PromptTokenizer,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<GeneratedImage> {
        let job = job.checked()?;
        let started = Instant::now();
        let guided = job.guidance_scale > 1.0;
        let positive = tokenizer.token_ids(&job.prompt)?;
        let context = if guided {
            let negative = tokenizer.token_ids(&job.neg_prompt)?;
            self.encode_token_ids(&[negative, positive])?
        } else {
            self.encode_token_ids(&[positive])?
        };
        let encoded = Instant::now();

        let mut scheduler = DpmSolverMultistepScheduler::new(DEFAULT_SCHEDULER_CONFIG, job.steps)?;
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
            return Err(InferenceError::InvalidImageSize { name, value });
        }
        let tensor = |context: &str| {
            let context = context.to_owned();
            move |source| InferenceError::Tensor { context, source }
        };
        let mut latents = (noise.randn_tensor(&shape, NoiseDType::F32, &self.device)?
            * f64::from(scheduler.init_noise_sigma()))
        .map_err(tensor("initial latents"))?;
        let timesteps = scheduler.timesteps().to_vec();
        for (step, &t) in timesteps.iter().enumerate() {
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0).map_err(tensor("guidance batch"))?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(&input);
            let eps = self.unet_forward(&input, t as f64, &context)?;
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
            self.vae_decode(&(&latents / SD15_VAE_SCALE).map_err(tensor("latent scaling"))?)?;
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
