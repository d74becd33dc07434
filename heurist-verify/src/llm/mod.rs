//! Chat answers re-checked on the claimed model (feature `inference`).
//!
//! For a greedy job (temperature 0) the answer is a function of the model, the prompt *and
//! the engine's numerics*: vLLM, llama.cpp and this crate agree on every token but where two
//! nearly tie. [`greedy_margin`] judges a greedy answer from any engine in one teacher-forced
//! pass, each claimed token within a calibrated margin of the model's best and the answer's
//! end where the model ends it; that is what a network verifier runs. [`check_greedy`]
//! (re-generate and compare) and [`check_greedy_scored`] (the same verdict from one pass
//! where it can) are exact: only for answers of this very engine, whose numerics the verifier
//! shares. Sampled answers are judged by their likelihood under the claimed model
//! ([`likelihood`]).
//!
//! [`check_greedy_submission`] takes the wire types as they come (a job and the
//! `miner_submit` answering it), builds the request the way a miner does ([`chat_request`])
//! and judges the first choice's text by [`check_greedy_margin`]; this is what `heurist
//! verify` runs.
//! [`check_sampled_submission`] does the same for a sampled job, by the answer's likelihood
//! ([`likelihood`], any engine's sampler) or by replaying this project's seeded sampler
//! ([`seeded`], miners running `heurist-inference`), as [`SampledJudge`] says.
//! [`check_usage_submission`] recounts the token usage the same submission claims ([`usage`]),
//! without a forward pass.

pub mod greedy_margin;
pub mod greedy_scored;
pub mod likelihood;
mod request;
pub mod seeded;
pub mod usage;

pub use greedy_margin::{GreedyMarginCheck, GreedyThresholds, check_greedy_margin};
pub use greedy_scored::{ScoredGreedyCheck, check_greedy_scored};
pub use likelihood::{OPENING_TOKENS, SampledCheck, SampledThresholds, check_sampled};
pub use request::{chat_request, engine_message};
pub use seeded::{SeededCheck, SeededMiss, SeededThresholds, check_seeded};
pub use usage::{ClaimedUsage, UsageCheck, UsageTolerance, check_usage, claimed_usage};

use heurist_inference::{ChatEngine, ChatRequest};
use heurist_protocol::openai::{Choice, FinishReason};
use heurist_protocol::{Job, JobParams, MinerLimits, MinerSubmit};

use crate::error::{Result, VerifyError};

/// The outcome of re-generating a greedy answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreedyCheck {
    /// Whether the claimed answer is the model's greedy answer.
    pub matches: bool,
    /// The model's answer.
    pub reference: String,
    /// Byte offset of the first difference (`None` when they match).
    pub first_difference: Option<usize>,
    /// Tokens the reference generated.
    pub reference_tokens: usize,
}

impl GreedyCheck {
    /// A one-line account of a mismatch, with the numbers, for a slash's evidence.
    pub fn evidence(&self, claimed: &str) -> String {
        let at = self.first_difference.unwrap_or(0);
        let excerpt = |s: &str| s.get(at..).unwrap_or("").chars().take(40).collect::<String>();
        format!(
            "greedy answer differs from the claimed model's at byte {at} of {} (reference {} bytes, {} tokens): claimed {:?}, model {:?}",
            claimed.len(),
            self.reference.len(),
            self.reference_tokens,
            excerpt(claimed),
            excerpt(&self.reference),
        )
    }
}

/// Re-generates `request` greedily on `engine` and compares with `claimed`.
///
/// `request` must be greedy (temperature 0): a sampled request is
/// [`VerifyError::NotGreedy`], since its answer is not a function of the prompt.
pub fn check_greedy(engine: &ChatEngine, request: &ChatRequest, claimed: &str) -> Result<GreedyCheck> {
    if request.temperature != 0.0 {
        return Err(VerifyError::NotGreedy { temperature: request.temperature });
    }
    let out = engine.chat(request).map_err(|e| VerifyError::Inference { reason: e.to_string() })?;
    let first_difference = first_difference(claimed, &out.text);
    Ok(GreedyCheck {
        matches: first_difference.is_none(),
        reference: out.text,
        first_difference,
        reference_tokens: out.usage.completion_tokens,
    })
}

/// The answer a chat submission claims: the text of its first choice.
pub fn submitted_answer(submit: &MinerSubmit) -> Result<String> {
    Ok(first_choice(submit)?.message.text_content())
}

/// The first choice (lowest index) of a chat submission.
fn first_choice(submit: &MinerSubmit) -> Result<Choice> {
    let choices = match submit.result.choices() {
        None => return Err(VerifyError::NotChatResult { job_id: submit.job_id.clone() }),
        Some(c) => c.map_err(|e| VerifyError::MalformedSubmit { source: Box::new(e) })?,
    };
    choices.into_iter().min_by_key(|c| c.index).ok_or_else(|| VerifyError::InvalidClaim {
        field: "result.Text",
        value: "[]".to_owned(),
        expected: "a choices array with at least one choice",
    })
}

/// Judges the answer `submit` claims for the greedy chat job `job` on `engine`, from any
/// engine, in one teacher-forced pass ([`check_greedy_margin`]). Whether generation ran to
/// `max_tokens` is the first choice's `finish_reason` (`length`).
///
/// A submission for another job is [`VerifyError::NoJob`]; an image result
/// [`VerifyError::NotChatResult`]; a sampled job [`VerifyError::NotGreedy`].
pub fn check_greedy_submission(
    engine: &ChatEngine,
    job: &Job,
    submit: &MinerSubmit,
    thresholds: &GreedyThresholds,
) -> Result<GreedyMarginCheck> {
    let request = submission_request(job, submit)?;
    let choice = first_choice(submit)?;
    let ran_to_limit = choice.finish_reason == Some(FinishReason::Length);
    check_greedy_margin(engine, &request, &choice.message.text_content(), ran_to_limit, thresholds)
}

/// Recounts the token usage `submit` claims for the chat job `job` ([`usage`]); `None` when
/// it claims none. Errors as [`check_greedy_submission`]'s, for any temperature.
pub fn check_usage_submission(
    engine: &ChatEngine,
    job: &Job,
    submit: &MinerSubmit,
    tolerance: &UsageTolerance,
) -> Result<Option<UsageCheck>> {
    let request = submission_request(job, submit)?;
    let Some(claimed) = claimed_usage(submit)? else { return Ok(None) };
    check_usage(engine, &request, &submitted_answer(submit)?, claimed, tolerance).map(Some)
}

/// How [`check_sampled_submission`] judges a sampled answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SampledJudge {
    /// By its likelihood under the claimed model ([`check_sampled`]): for an answer from any
    /// engine's sampler (vLLM, llama.cpp, this project's).
    Likelihood(SampledThresholds),
    /// By replaying `heurist-inference`'s seeded draws ([`check_seeded`]): for a miner that
    /// runs this project's engine; catches close substitutes the likelihood cannot. The job
    /// must carry its seed.
    SeededReplay(SeededThresholds),
}

/// The outcome of [`check_sampled_submission`]: the check that ran, with its numbers.
#[derive(Clone, Debug, PartialEq)]
pub enum SampledSubmissionCheck {
    /// [`SampledJudge::Likelihood`] ran.
    Likelihood(SampledCheck),
    /// [`SampledJudge::SeededReplay`] ran.
    SeededReplay(SeededCheck),
}

impl SampledSubmissionCheck {
    /// Whether the answer holds.
    pub fn holds(&self) -> bool {
        match self {
            Self::Likelihood(c) => c.holds,
            Self::SeededReplay(c) => c.holds,
        }
    }

    /// Why it does not hold, with the numbers (empty when it holds).
    pub fn reasons(&self) -> &[String] {
        match self {
            Self::Likelihood(c) => &c.reasons,
            Self::SeededReplay(c) => &c.reasons,
        }
    }

    /// Tokens of the re-encoded answer.
    pub fn tokens(&self) -> usize {
        match self {
            Self::Likelihood(c) => c.tokens,
            Self::SeededReplay(c) => c.tokens,
        }
    }
}

/// Re-checks the answer `submit` claims for the sampled chat job `job` on `engine`, as `judge`
/// says. Whether generation ran to `max_tokens` is the first choice's `finish_reason`
/// (`length`).
///
/// Errors as [`check_greedy_submission`]'s, with [`VerifyError::NotSampled`] for a greedy
/// job, [`VerifyError::UnmodelledSampling`] for the likelihood test of a request it does not
/// model, and [`VerifyError::NotSeeded`] for a replay of a job that left its seed to the miner
/// (`seed` absent or -1: nothing to replay).
pub fn check_sampled_submission(
    engine: &ChatEngine,
    job: &Job,
    submit: &MinerSubmit,
    judge: &SampledJudge,
) -> Result<SampledSubmissionCheck> {
    let (request, seed_was_random) = submission_request_and_seed(job, submit)?;
    let choice = first_choice(submit)?;
    let (claimed, ran_to_limit) = (choice.message.text_content(), choice.finish_reason == Some(FinishReason::Length));
    match judge {
        SampledJudge::Likelihood(t) => {
            check_sampled(engine, &request, &claimed, ran_to_limit, t).map(SampledSubmissionCheck::Likelihood)
        }
        SampledJudge::SeededReplay(t) => {
            if seed_was_random && request.temperature > 0.0 {
                return Err(VerifyError::NotSeeded { temperature: request.temperature, seed: None });
            }
            check_seeded(engine, &request, &claimed, ran_to_limit, t).map(SampledSubmissionCheck::SeededReplay)
        }
    }
}

/// The engine request of the chat job `job` that `submit` answers.
fn submission_request(job: &Job, submit: &MinerSubmit) -> Result<ChatRequest> {
    submission_request_and_seed(job, submit).map(|(request, _)| request)
}

/// [`submission_request`], and whether the job left its seed to the miner (the request then
/// carries seed 0: the seed changes neither the prompt, nor the limits, nor a greedy answer,
/// and a fixed one keeps the request deterministic).
fn submission_request_and_seed(job: &Job, submit: &MinerSubmit) -> Result<(ChatRequest, bool)> {
    if submit.job_id != job.job_id {
        return Err(VerifyError::NoJob { job_id: submit.job_id.clone(), miner_id: submit.miner_id.to_string() });
    }
    let clamped = MinerLimits::default()
        .clamp(job, || 0)
        .map_err(|e| VerifyError::MalformedJob { job_id: job.job_id.clone(), source: Box::new(e) })?;
    let JobParams::Llm(params) = &clamped.params else {
        return Err(VerifyError::NotChatResult { job_id: job.job_id.clone() });
    };
    let request = chat_request(params).map_err(|e| VerifyError::Inference { reason: e.to_string() })?;
    Ok((request, params.seed_was_random))
}

/// Byte offset of the first difference between two texts, `None` when equal.
fn first_difference(a: &str, b: &str) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_points_at_the_split() {
        assert_eq!(first_difference("abc", "abc"), None);
        assert_eq!(first_difference("abc", "abd"), Some(2));
        assert_eq!(first_difference("ab", "abc"), Some(2));
        assert_eq!(first_difference("", "x"), Some(0));
    }
}
