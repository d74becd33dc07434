//! The image engines: Stable Diffusion 1.5 and SDXL from the network's single-file checkpoints,
//! on the numerically exact foundation of seeded noise and the diffusion schedulers.
//!
//! - [`ImageEngine`]: loads an LDM / A1111 single-file checkpoint or a diffusers folder
//!   (memory-mapped, renamed on lookup, architecture read from the tensors) and runs an
//!   [`ImageJob`] to a PNG ([`GeneratedImage`]), prompts weighted and chunked with the CLIP
//!   tokenizer as the reference miner does, or the caller's own ids ([`PromptEncoding`]);
//! - [`noise`]: the [`noise::NoiseSource`] trait and [`noise::TorchCpuGenerator`], torch's seeded
//!   CPU generator bit for bit, so that a job's seed gives the reference miner's latents;
//! - [`scheduler`]: the samplers' timestep and sigma tables and their update steps, with
//!   diffusers' configuration semantics.
//!
//! Invariant: everything here is checked against the peers it reproduces (torch, diffusers)
//! through fixtures in tests/fixtures/, never only against its own earlier output.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use heurist_inference::DeviceSpec;
//! use heurist_inference::image::{ImageEngine, ImageJob, Lora, LoraScale};
//!
//! # fn main() -> heurist_inference::Result<()> {
//! let mut engine = ImageEngine::load_checkpoint("braindance_BD071.safetensors", DeviceSpec::Cpu)?;
//! engine.set_lora(Some((Arc::new(Lora::open("DD-pepe-v2.safetensors")?), LoraScale::reference(0.8))))?;
//! let job = ImageJob {
//!     prompt: "a koi in a pond".into(),
//!     neg_prompt: String::new(),
//!     width: 512,
//!     height: 768,
//!     steps: 20,
//!     guidance_scale: 7.0,
//!     seed: 2288435497,
//!     sampler: None, // the family's: DPM-Solver++ 2M SDE Karras for SD 1.5
//! };
//! // The CLIP tokenizer and the reference's long-prompt weighting: `(word:1.2)`, 225 tokens.
//! let image = engine.generate(&job)?;
//! std::fs::write("koi.png", &image.png).expect("writable directory");
//! # Ok(())
//! # }
//! ```

mod checkpoint;
mod clip_text;
pub mod clip_tokenizer;
mod composite;
mod conv;
mod detect;
mod engine;
mod group_norm;
mod job;
mod ldm_names;
mod lora;
pub mod noise;
pub mod prompt;
mod resnet;
pub mod scheduler;
mod sdpa;
mod simd;
mod transformer;
mod unet;

pub use clip_text::{ClipActivation, ClipDims};
pub use composite::{CompositeSpec, Composites};
pub use detect::{AddEmbeddingDims, HEAD_SIZE, SD15_UNET_HEADS, SdArchitecture, SdFamily};
pub use engine::{
    CLIP_END_TOKEN, ImageEngine, OPEN_CLIP_PAD_TOKEN, PromptEncoding, SD15_VAE_SCALE,
    SDXL_VAE_SCALE, TextConditioning,
};
pub use job::{
    GeneratedImage, ImageJob, ImageTimings, MAX_IMAGE_SIDE, PromptTokenizer,
    encode_png,
};
pub use lora::{Lora, LoraScale};
pub use scheduler::{Scheduler, SchedulerKind};
