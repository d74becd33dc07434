//! The image engine's numerically exact foundation: seeded noise and the diffusion schedulers.
//!
//! - [`noise`]: the [`noise::NoiseSource`] trait and [`noise::TorchCpuGenerator`], torch's seeded
//!   CPU generator bit for bit, so that a job's seed gives the reference miner's latents;
//! - [`scheduler`]: the samplers' timestep and sigma tables and their update steps, with
//!   diffusers' configuration semantics.
//!
//! Invariant: everything here is checked against the peers it reproduces (torch, diffusers)
//! through fixtures in tests/fixtures/, never only against its own earlier output.

pub mod clip_tokenizer;
pub mod noise;
pub mod prompt;
pub mod scheduler;
