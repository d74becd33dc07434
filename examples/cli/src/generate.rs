//! `heurist generate`: one text-to-image job on a local checkpoint, as a miner would run it.
//!
//! A thin layer over heurist-inference's image engine: load the single-file checkpoint (the
//! architecture comes from its tensors; `--family` only checks it), swap in a VAE and merge a
//! LoRA if asked, read the job, run it with the reference's seeded noise and long prompt
//! weighting, and write the PNG. Progress goes to stderr, one line a step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use heurist_inference::DeviceSpec;
use heurist_inference::image::noise::TorchCpuGenerator;
use heurist_inference::image::{ImageEngine, ImageJob, Lora, PromptEncoding, SdFamily};

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
    /// job's {"model_input": {"SD": …}}) or a file like the network's example jobs.
    job: PathBuf,
    /// The single-file checkpoint (LDM / A1111 safetensors, SD 1.5 or SDXL).
    #[arg(long)]
    model: PathBuf,
    /// The family the checkpoint must be [default: whatever its tensors say].
    #[arg(long, value_enum)]
    family: Option<Family>,
    /// A VAE to use instead of the checkpoint's (the registry's `vae` override).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A LoRA (kohya safetensors) to merge into the model.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// The LoRA's scale (the registry's `default_weight`).
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    lora_weight: f64,
    /// Where to write the PNG.
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda, cuda:N or auto (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// The job inside `text`: the SD input itself, or under `model_input` and/or `SD`.
fn read_job(path: &Path) -> anyhow::Result<ImageJob> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    for key in ["model_input", "SD"] {
        if let Some(inner) = value.get_mut(key) {
            value = inner.take();
        }
    }
    serde_json::from_value(value).with_context(|| format!("{}: not an SD job", path.display()))
}

pub(crate) fn run(args: GenerateArgs) -> anyhow::Result<Outcome> {
    let job = read_job(&args.job)?;
    // The job's own limits and errors before the (slow) model load.
    job.checked()
        .with_context(|| format!("{}", args.job.display()))?;

    let started = Instant::now();
    let mut engine = ImageEngine::load_checkpoint(&args.model, args.device)?;
    let found = match engine.architecture().family {
        SdFamily::Sd15 => Family::Sd15,
        SdFamily::Sdxl => Family::Sdxl,
    };
    if let Some(family) = args.family
        && family != found
    {
        bail!(
            "{}: --family {} but the checkpoint's tensors are {}",
            args.model.display(),
            family.name(),
            found.name(),
        );
    }
    if let Some(vae) = &args.vae {
        engine.set_vae(Some(vae))?;
    }
    if let Some(lora) = &args.lora {
        engine.set_lora(Some((Arc::new(Lora::open(lora)?), args.lora_weight)))?;
    }
    eprintln!(
        "loaded {} ({}) in {:.1} s",
        args.model.display(),
        found.name(),
        started.elapsed().as_secs_f64()
    );

    let steps = job.checked()?.steps;
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
