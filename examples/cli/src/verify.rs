//! `heurist verify`: re-check a chat result on the claimed model.
//!
//! Reads a job (as `miner_request` answered it) and the `miner_submit` body answering it, and
//! re-checks the answer on the model file given, with `heurist-verify`:
//! - a greedy job: `check_greedy_submission` (one teacher-forced pass: every token within the
//!   margin of the model's best that honest engines keep, and the end where the model ends);
//! - a sampled job: `check_sampled_submission`, by the answer's likelihood under the model (an
//!   answer from any engine's sampler), or with `--seeded-replay` by replaying this project's
//!   seeded sampler (for miners running `heurist-inference`; catches close substitutes the
//!   likelihood cannot, and needs the job's seed);
//!
//! then recounts the token usage the submission claims. Exit 0 when the result holds, 1 when it
//! is rejected (the evidence on standard output), 2 when it cannot be judged: bad input, a
//! result for another job, an image job, a sampled job the likelihood test does not model
//! (top-k, top-p, penalties), or a replay asked of a job without a seed.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use heurist_inference::{ChatEngine, DeviceSpec};
use heurist_protocol::{Job, MinerSubmit};
use heurist_verify::VerifyError;
use heurist_verify::llm::{
    GreedyThresholds, SampledJudge, SampledSubmissionCheck, SampledThresholds, SeededThresholds, UsageTolerance,
    check_greedy_submission,
    check_sampled_submission, check_usage_submission,
};

use crate::Outcome;
use crate::job::read_input;

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The claimed model's file (a GGUF chat model).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
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
