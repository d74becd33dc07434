//! `heurist verify`: re-check a chat result on the claimed model.
//!
//! Reads a job (as `miner_request` answered it) and the `miner_submit` body answering it,
//! and, for a greedy job, re-generates the answer on the model file given with
//! `heurist-verify`'s `check_greedy_submission` (one teacher-forced pass where that confirms
//! the answer), then recounts the token usage the submission claims. Exit 0 when the result
//! holds, 1 when it is rejected (the evidence on standard output), 2 when it cannot be judged:
//! bad input, a result for another job, an image job, or a sampled job (only greedy answers
//! are a function of the prompt).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use heurist_inference::{ChatEngine, DeviceSpec};
use heurist_protocol::{Job, MinerSubmit};
use heurist_verify::llm::{UsageTolerance, check_greedy_submission, check_usage_submission};

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
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: VerifyArgs) -> anyhow::Result<Outcome> {
    let job = Job::from_slice(&read_input(&args.job)?).with_context(|| format!("job {}", args.job.display()))?;
    let submit = MinerSubmit::from_slice(&read_input(&args.submit)?)
        .with_context(|| format!("miner_submit {}", args.submit.display()))?;
    let engine = ChatEngine::load_gguf(&args.model, args.device)
        .with_context(|| format!("loading --model {}", args.model.display()))?;
    eprintln!("re-checking job {} ({}) on {}", job.job_id, job.model_id, args.model.display());
    let check = check_greedy_submission(&engine, &job, &submit)
        .with_context(|| format!("job {} by {}", job.job_id, submit.miner_id))?;
    if check.matches {
        let usage = check_usage_submission(&engine, &job, &submit, &UsageTolerance::default())
            .with_context(|| format!("usage of job {} by {}", job.job_id, submit.miner_id))?;
        if let Some(usage) = usage.filter(|u| !u.holds) {
            println!("rejected: job {} by {}: {}", job.job_id, submit.miner_id, usage.evidence());
            return Ok(Outcome::Rejected);
        }
        println!(
            "holds: job {} by {} is the model's greedy answer ({} tokens)",
            job.job_id, submit.miner_id, check.reference_tokens
        );
        Ok(Outcome::Ok)
    } else {
        let claimed = heurist_verify::llm::submitted_answer(&submit)?;
        println!("rejected: job {} by {}: {}", job.job_id, submit.miner_id, check.evidence(&claimed));
        Ok(Outcome::Rejected)
    }
}
