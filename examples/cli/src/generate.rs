//! `heurist generate`: one text-to-image job on a local checkpoint, as a miner would run it.
//!
//! A thin layer over heurist-inference's image engine: load the single-file checkpoint (the
//! architecture comes from its tensors; `--family` only checks it), swap in a VAE and merge a
//! LoRA if asked, read the job, run it with the reference's seeded noise and long prompt
//! weighting, and write the PNG. Progress goes to stderr, one line a step.
//!
//! The job is read as a miner reads it: decoded into heurist-protocol's [`SdInput`] and clamped
//! by [`MinerLimits::clamp`] (the network's default limits; a negative seed, the network's "no
//! seed", drawn at random and printed), then translated for the engine by
//! `heurist_verify::jobs::image_job`, as the miner and the verifier translate it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use heurist_inference::DeviceSpec;
use heurist_inference::image::noise::TorchCpuGenerator;
use heurist_inference::image::{
    ImageEngine, ImageJob, Lora, LoraScale, PromptEncoding, SdFamily,
};
use heurist_protocol::{Job, JobParams, MinerLimits, ModelInput, SdInput, SdParams};

use crate::Outcome;

/// The model families `--family` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Family {
    /// Stable Diffusion 1.5 (registry types sd15, composite15).
    Sd15,
    /// Stable Diffusion XL (registry types sdxl10, compositexl).
    Sdxl,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::Sd15 => "sd15",
            Self::Sdxl => "sdxl",
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// The job: an SD `model_input` ({"prompt", "neg_prompt", "width", "height",
    /// "num_iterations", "guidance_scale", "seed"}, optionally wrapped in {"SD": …} or a whole
    /// job's {"model_input": {"SD": …}}) or a file like the network's example jobs. Clamped to
    /// the network's limits as a miner clamps it; seed -1 picks one at random.
    job: PathBuf,
    /// The single-file checkpoint (LDM / A1111 safetensors, SD 1.5 or SDXL).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    parts: ImageModelArgs,
    /// Where to write the PNG.
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda, cuda:N or auto (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// What goes with an image checkpoint: shared by `generate` and `verify --image`.
#[derive(Args, Debug, Default)]
pub(crate) struct ImageModelArgs {
    /// The family the checkpoint must be [default: whatever its tensors say].
    #[arg(long, value_enum)]
    family: Option<Family>,
    /// A VAE to use instead of the checkpoint's (the registry's `vae` override).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A LoRA (kohya or diffusers safetensors) to merge into the model: a composite's.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// The LoRA's weight (the registry's `default_weight`), applied as the reference miner
    /// applies it: to the UNet; the text encoders' adapters stay at 1.0.
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    lora_weight: f64,
}

/// Loads the checkpoint at `model` with `parts` on `device`, checking `--family`; says what it
/// loaded on stderr.
pub(crate) fn load_engine(model: &Path, parts: &ImageModelArgs, device: DeviceSpec) -> anyhow::Result<ImageEngine> {
    let started = Instant::now();
    let mut engine = ImageEngine::load_checkpoint(model, device)?;
    let found = match engine.architecture().family {
        SdFamily::Sd15 => Family::Sd15,
        SdFamily::Sdxl => Family::Sdxl,
    };
    if let Some(family) = parts.family
        && family != found
    {
        bail!(
            "{}: --family {} but the checkpoint's tensors are {}",
            model.display(),
            family.name(),
            found.name(),
        );
    }
    if let Some(vae) = &parts.vae {
        engine.set_vae(Some(vae))?;
    }
    if let Some(lora) = &parts.lora {
        engine.set_lora(Some((Arc::new(Lora::open(lora)?), LoraScale::reference(parts.lora_weight))))?;
    }
    eprintln!(
        "loaded {} ({}) in {:.1} s",
        model.display(),
        found.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(engine)
}

/// The SD job in the file at `path` (the SD input itself, or under `model_input` and/or `SD`)
/// as heurist-protocol decodes and clamps it for a miner: [`MinerLimits::clamp`] with the
/// network's default limits, a negative seed drawn with `random`.
fn read_job(path: &Path, random: impl FnOnce() -> u64) -> anyhow::Result<SdParams> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let job_id = value
        .get("job_id")
        .and_then(|v| v.as_str())
        .unwrap_or("local")
        .to_owned();
    let model_id = value
        .get("model_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    for key in ["model_input", "SD"] {
        if let Some(inner) = value.get_mut(key) {
            value = inner.take();
        }
    }
    let input: SdInput = serde_json::from_value(value)
        .with_context(|| format!("{}: not an SD job", path.display()))?;
    let job = Job {
        job_id,
        model_id,
        model_input: ModelInput::Sd(input),
        temp_credentials: None,
        extra: serde_json::Map::new(),
    };
    let clamped = MinerLimits::default()
        .clamp(&job, random)
        .with_context(|| format!("{}", path.display()))?;
    match clamped.params {
        JobParams::Sd(params) => Ok(params),
        JobParams::Llm(_) => bail!("{}: a chat job, not an SD job", path.display()),
    }
}

/// The engine's job for clamped protocol parameters: the one translation the miner and the
/// verifier use too ([`heurist_verify::jobs::image_job`]); a sampler the engine does not run is
/// refused, naming it.
pub(crate) fn image_job(params: &SdParams) -> anyhow::Result<ImageJob> {
    Ok(heurist_verify::jobs::image_job(params)?)
}

pub(crate) fn run(args: GenerateArgs) -> anyhow::Result<Outcome> {
    let params = read_job(&args.job, rand::random::<u64>)?;
    if params.seed_was_random {
        eprintln!("seed: the job names none (-1); drew {}", params.seed);
    }
    // The job's errors, the engine's own included, before the (slow) model load.
    let job = image_job(&params)
        .and_then(|job| Ok(job.checked()?))
        .with_context(|| format!("{}", args.job.display()))?;

    let engine = load_engine(&args.model, &args.parts, args.device)?;

    let steps = job.steps;
    let mut noise = TorchCpuGenerator::new(job.seed);
    let mut last = Instant::now();
    let image = engine.generate_with(
        &job,
        PromptEncoding::LongPromptWeighting,
        &mut noise,
        &mut |step, _| {
            eprintln!(
                "step {}/{steps} ({:.2} s)",
                step + 1,
                last.elapsed().as_secs_f64()
            );
            last = Instant::now();
        },
    )?;
    std::fs::write(&args.out, &image.png)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let t = image.timings;
    eprintln!(
        "wrote {} ({}x{}, {} steps, seed {}): encode {:.2} s, denoise {:.2} s, decode {:.2} s",
        args.out.display(),
        image.width,
        image.height,
        image.steps,
        image.seed,
        t.encode.as_secs_f64(),
        t.denoise.as_secs_f64(),
        t.decode.as_secs_f64()
    );
    Ok(Outcome::Ok)
}
