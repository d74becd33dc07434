//! `heurist verify`: re-check a chat or image result on the claimed model.
//!
//! Reads a job (as `miner_request` answered it) and the `miner_submit` body answering it, and
//! re-checks the result on the model file given, with `heurist-verify`. An image job's result
//! is the PNG the miner uploaded, read from the file `--image` names: the job is clamped as a
//! miner clamps it (the network's default limits) and re-run on the SD checkpoint `--model`
//! (with `--lora` at `--lora-weight` for a composite, `--vae` for a VAE override) with the
//! noise of each precision a miner may run in (f32, f16, bf16), and judged within that
//! precision's calibrated bars (`heurist_verify::image::rerun::check_image`,
//! `PrecisionBars::NETWORK`). A chat answer is judged:
//! - a greedy job: `check_greedy_submission` (one teacher-forced pass: every token within the
//!   margin of the model's best that honest engines keep, and the end where the model ends);
//! - a sampled job: `check_sampled_submission`, by the answer's likelihood under the model (an
//!   answer from any engine's sampler), or with `--seeded-replay` by replaying this project's
//!   seeded sampler (for miners running `heurist-inference`; catches close substitutes the
//!   likelihood cannot, and needs the job's seed);
//!
//! then recounts the token usage the submission claims. Exit 0 when the result holds, 1 when it
//! is rejected (the evidence on standard output; a file that is not a PNG included), 2 when it
//! cannot be judged: bad input, a result for another job, an image job without `--image` (or
//! `--image` for a chat job), an image job without a seed, a sampled job the likelihood test
//! does not model (top-k, top-p, penalties), or a replay asked of a job without a seed.
//!
//! ```sh
//! heurist verify --model tiny-sd15.safetensors job.json submit.json --image result.png
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use heurist_inference::{ChatEngine, DeviceSpec};
use heurist_inference::image::PromptEncoding;
use heurist_protocol::{Job, JobParams, MinerLimits, MinerSubmit, ModelInput};
use heurist_verify::VerifyError;
use heurist_verify::image::PrecisionBars;
use heurist_verify::image::rerun::check_image;
use heurist_verify::llm::{
    GreedyThresholds, SampledJudge, SampledSubmissionCheck, SampledThresholds, SeededThresholds, UsageTolerance,
    check_greedy_submission,
    check_sampled_submission, check_usage_submission,
};

use crate::Outcome;
use crate::generate::{ImageModelArgs, image_job, load_engine};
use crate::job::read_input;

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The claimed model's file: a GGUF chat model, or for an image job the SD single-file
    /// checkpoint (LDM / A1111 safetensors, SD 1.5 or SDXL).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// An image job's result: the PNG the miner uploaded, read from this file.
    #[arg(long, value_name = "FILE.png")]
    image: Option<PathBuf>,
    #[command(flatten)]
    parts: ImageModelArgs,
    /// Where to run the model: `cpu`, or `cuda:N` in a build with CUDA.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// The job, a `miner_request` answer (JSON), or - for standard input.
    job: PathBuf,
    /// The `miner_submit` body answering it (JSON).
    submit: PathBuf,
    /// For a sampled job: the miner ran heurist-inference's sampler, so replay its seeded
    /// draws (exact) instead of testing the answer's likelihood (any sampler).
    #[arg(long)]
    seeded_replay: bool,
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: VerifyArgs) -> anyhow::Result<Outcome> {
    let job = Job::from_slice(&read_input(&args.job)?).with_context(|| format!("job {}", args.job.display()))?;
    let submit = MinerSubmit::from_slice(&read_input(&args.submit)?)
        .with_context(|| format!("miner_submit {}", args.submit.display()))?;
    match (&job.model_input, &args.image) {
        (ModelInput::Sd(_), Some(png)) => return verify_image(&args, &job, &submit, png),
        (ModelInput::Sd(_), None) => anyhow::bail!(
            "job {} is an image job: pass --image FILE.png, the object the miner uploaded",
            job.job_id
        ),
        (_, Some(_)) => anyhow::bail!("job {} is a chat job: --image is for image jobs", job.job_id),
        _ => {}
    }
    let engine = ChatEngine::load_gguf(&args.model, args.device)
        .with_context(|| format!("loading --model {}", args.model.display()))?;
    eprintln!("re-checking job {} ({}) on {}", job.job_id, job.model_id, args.model.display());
    let what = || format!("job {} by {}", job.job_id, submit.miner_id);
    let greedy = match check_greedy_submission(&engine, &job, &submit, &GreedyThresholds::default()) {
        Err(VerifyError::NotGreedy { .. }) => None,
        other => Some(other.with_context(what)?),
    };
    let holds = match &greedy {
        Some(check) if !check.holds => {
            println!("rejected: {}: {}", what(), check.reasons.join("; "));
            return Ok(Outcome::Rejected);
        }
        Some(check) => format!(
            "is the model's greedy answer ({} tokens, {} within the engines' margin of the model's best, {:.2} logits in all)",
            check.tokens, check.departures, check.total_gap
        ),
        None => {
            let judge = if args.seeded_replay {
                SampledJudge::SeededReplay(SeededThresholds::default())
            } else {
                SampledJudge::Likelihood(SampledThresholds::default())
            };
            let check = check_sampled_submission(&engine, &job, &submit, &judge).with_context(what)?;
            if !check.holds() {
                println!("rejected: {}: {}", what(), check.reasons().join("; "));
                return Ok(Outcome::Rejected);
            }
            match check {
                SampledSubmissionCheck::Likelihood(c) => format!(
                    "is a likely sample of the model ({} tokens, z {:.2} within ±{})",
                    c.tokens,
                    c.z,
                    SampledThresholds::default().max_abs_z
                ),
                SampledSubmissionCheck::SeededReplay(c) => {
                    format!("is what the model and the job's seed draw ({} tokens, every draw replayed)", c.tokens)
                }
            }
        }
    };
    let usage = check_usage_submission(&engine, &job, &submit, &UsageTolerance::default())
        .with_context(|| format!("usage of {}", what()))?;
    if let Some(usage) = usage.filter(|u| !u.holds) {
        println!("rejected: {}: {}", what(), usage.evidence());
        return Ok(Outcome::Rejected);
    }
    println!("holds: {} {holds}", what());
    Ok(Outcome::Ok)
}

/// The image half of `heurist verify`.
#[allow(clippy::print_stdout)]
fn verify_image(args: &VerifyArgs, job: &Job, submit: &MinerSubmit, png: &std::path::Path) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        submit.job_id == job.job_id,
        "the submission answers job {}, not job {}",
        submit.job_id,
        job.job_id
    );
    let mut no_seed = false;
    let clamped = MinerLimits::default()
        .clamp(job, || {
            no_seed = true;
            0
        })
        .with_context(|| format!("job {}", job.job_id))?;
    anyhow::ensure!(
        !no_seed,
        "job {} names no seed (-1): the miner drew its own, so no re-run can reproduce the image",
        job.job_id
    );
    let JobParams::Sd(params) = clamped.params else {
        anyhow::bail!("job {} is not an image job", job.job_id)
    };
    let image_job = image_job(&params).with_context(|| format!("job {}", job.job_id))?;
    let claimed = std::fs::read(png).with_context(|| format!("reading --image {}", png.display()))?;
    let engine = load_engine(&args.model, &args.parts, args.device)
        .with_context(|| format!("loading --model {}", args.model.display()))?;
    eprintln!("re-running job {} ({}) on {}", job.job_id, job.model_id, args.model.display());
    let what = format!("job {} by {}", job.job_id, submit.miner_id);
    let bars = PrecisionBars::NETWORK;
    match check_image(&engine, &image_job, PromptEncoding::LongPromptWeighting, &claimed, &bars) {
        Ok((precision, verdict)) if verdict.holds() => {
            println!("holds: {what} is the job's image, as a miner running in {precision} draws it: {}", verdict.evidence());
            Ok(Outcome::Ok)
        }
        Ok((precision, verdict)) => {
            println!(
                "rejected: {what}: not the job's image in any precision; closest, {precision}: {} (bars: {})",
                verdict.explain(),
                bars.get(precision)
            );
            Ok(Outcome::Rejected)
        }
        Err(e @ VerifyError::ImageDecode { .. }) => {
            println!("rejected: {what}: {} is not a PNG: {e}", png.display());
            Ok(Outcome::Rejected)
        }
        Err(e) => Err(e).with_context(|| what.clone()),
    }
}
