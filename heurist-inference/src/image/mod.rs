//! The image engines: Stable Diffusion 1.5 and SDXL from the network's single-file checkpoints,
//! on the numerically exact foundation of seeded noise and the diffusion schedulers.
//!
//! - [`ImageEngine`]: loads an LDM / A1111 single-file checkpoint or a diffusers folder
//!   (memory-mapped, renamed on lookup, architecture read from the tensors) and runs an
//!   [`ImageJob`] to a PNG ([`GeneratedImage`]), taking prompts through a [`PromptTokenizer`];
//! - [`noise`]: the [`noise::NoiseSource`] trait and [`noise::TorchCpuGenerator`], torch's seeded
//!   CPU generator bit for bit, so that a job's seed gives the reference miner's latents;
//! - [`scheduler`]: the samplers' timestep and sigma tables and their update steps, with
//!   diffusers' configuration semantics.
//!
//! Invariant: everything here is checked against the peers it reproduces (torch, diffusers)
//! through fixtures in tests/fixtures/, never only against its own earlier output.

mod checkpoint;
mod clip_text;
mod detect;
mod engine;
mod job;
mod ldm_names;
mod lora;
pub mod noise;
pub mod scheduler;
mod transformer;
mod unet;

pub use clip_text::{ClipActivation, ClipDims};
pub use detect::{AddEmbeddingDims, HEAD_SIZE, SD15_UNET_HEADS, SdArchitecture, SdFamily};
pub use engine::{
    CLIP_END_TOKEN, ImageEngine, OPEN_CLIP_PAD_TOKEN, SD15_VAE_SCALE, SDXL_VAE_SCALE,
    TextConditioning,
};
pub use job::{
    GeneratedImage, ImageJob, ImageTimings, MAX_IMAGE_SIDE, MAX_IMAGE_STEPS, PromptTokenizer,
    SamplerKind, SamplerSpec, encode_png,
};
pub use lora::Lora;
