//! The seam between the network's jobs and the engines' requests (feature `inference`): a
//! clamped job (`heurist_protocol::MinerLimits::clamp`) becomes the engine's request here, once,
//! for the miner that runs it, the CLI, the demo and the verifier that re-runs it. If any two
//! built it differently, an honest result would fail its check. It lives in this crate because
//! the verifier is the one party that must rebuild exactly what the miner built.

use heurist_inference::image::{ImageJob, SchedulerKind};
use heurist_protocol::SdParams;

pub use crate::llm::{chat_request, engine_message};

/// The image engine's job for a clamped image job: prompts, size, steps, guidance, seed (a
/// `-1` already drawn by the clamp), and the sampler the job names, translated from diffusers'
/// class and options; `None` leaves the family's default (the reference's: DPM-Solver++ 2M
/// SDE Karras for SD 1.5, Euler for SDXL).
///
/// # Errors
/// [`heurist_inference::InferenceError::UnknownScheduler`] for a sampler the engine does not
/// run, naming it.
///
/// ```
/// use heurist_protocol::{Job, JobParams, MinerLimits, ModelInput, SdInput};
/// use heurist_verify::jobs::image_job;
///
/// let input: SdInput = serde_json::from_value(serde_json::json!({
///     "prompt": "a koi pond", "neg_prompt": "", "height": 512, "width": 768,
///     "num_iterations": 20, "guidance_scale": 7.0, "seed": 42,
/// })).unwrap();
/// let job = Job { job_id: "j".into(), model_id: "BrainDance".into(), model_input: ModelInput::Sd(input),
///                 temp_credentials: None, extra: Default::default() };
/// let JobParams::Sd(params) = MinerLimits::default().clamp(&job, || 0).unwrap().params else { unreachable!() };
/// let engine_job = image_job(&params).unwrap();
/// assert_eq!((engine_job.width, engine_job.height, engine_job.steps, engine_job.seed), (768, 512, 20, 42));
/// assert_eq!(engine_job.sampler, None);
/// ```
pub fn image_job(params: &SdParams) -> heurist_inference::Result<ImageJob> {
    let sampler = match &params.sampler {
        Some(s) => Some(SchedulerKind::from_diffusers(&s.class_name, s.algorithm_type.as_deref(), s.use_karras_sigmas)?),
        None => None,
    };
    Ok(ImageJob {
        prompt: params.prompt.clone(),
        neg_prompt: params.neg_prompt.clone(),
        width: params.width,
        height: params.height,
        steps: params.steps as usize,
        guidance_scale: params.guidance_scale,
        seed: params.seed,
        sampler,
    })
}
