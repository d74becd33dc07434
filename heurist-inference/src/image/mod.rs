//! The image engines: Stable Diffusion 1.5 from the network's single-file checkpoints, on the
//! numerically exact foundation of seeded noise and the diffusion schedulers.
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
mod detect;
mod job;
mod ldm_names;
pub mod noise;
pub mod scheduler;
mod sd15;

pub use detect::{CLIP_HEAD_SIZE, SD15_UNET_HEADS, SdArchitecture};
pub use job::{
    GeneratedImage, ImageJob, ImageTimings, MAX_IMAGE_SIDE, MAX_IMAGE_STEPS, PromptTokenizer,
    encode_png,
};
pub use sd15::{CLIP_END_TOKEN, ImageEngine, SD15_VAE_SCALE};
