//! Chat answers re-checked on the claimed model (feature `inference`).
//!
//! For a greedy job (temperature 0) the answer is a function of the model and the prompt:
//! re-generating it on the claimed model must give the same text, so any difference is
//! evidence that the miner ran another model (or a further-quantised one), sampled instead
//! of decoding greedily, cut the answer short, or made the text up. The evidence names the
//! first point where the two answers part.
//!
//! This is exact only where the verifier's numerics equal the miner's (same engine, same
//! weights, same kernels); checking answers made by another engine (vLLM, llama.cpp) needs a
//! tolerance on rescored likelihoods instead. Sampled answers are judged by their likelihood
//! under the claimed model ([`likelihood`]).
//!
//! [`check_greedy_submission`] takes the wire types as they come (a job and the
//! `miner_submit` answering it), builds the request the way a miner does ([`chat_request`])
//! and checks the first choice's text; this is what `heurist verify` runs.
//! [`check_usage_submission`] recounts the token usage the same submission claims ([`usage`]),
//! without a forward pass.

pub mod greedy_scored;
pub mod likelihood;
mod request;
pub mod seeded;
pub mod usage;

pub use greedy_scored::{ScoredGreedyCheck, check_greedy_scored};
pub use likelihood::{SampledCheck, SampledThresholds, check_sampled};
pub use request::{chat_request, engine_message};
pub use seeded::{SeededCheck, SeededMiss, SeededThresholds, check_seeded};
pub use usage::{ClaimedUsage, UsageCheck, UsageTolerance, check_usage, claimed_usage};

use heurist_inference::{ChatEngine, ChatRequest};
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
    let choices = match submit.result.choices() {
        None => return Err(VerifyError::NotChatResult { job_id: submit.job_id.clone() }),
        Some(c) => c.map_err(|e| VerifyError::MalformedSubmit { source: Box::new(e) })?,
    };
    let first = choices.into_iter().min_by_key(|c| c.index).ok_or_else(|| VerifyError::InvalidClaim {
        field: "result.Text",
        value: "[]".to_owned(),
        expected: "a choices array with at least one choice",
    })?;
    Ok(first.message.text_content())
}

/// Re-checks the answer `submit` claims for the greedy chat job `job` on `engine`, by one
/// teacher-forced pass where that confirms it ([`check_greedy_scored`]), else by re-generating.
///
/// A submission for another job is [`VerifyError::NoJob`]; an image result
/// [`VerifyError::NotChatResult`]; a sampled job [`VerifyError::NotGreedy`].
pub fn check_greedy_submission(engine: &ChatEngine, job: &Job, submit: &MinerSubmit) -> Result<GreedyCheck> {
    let request = submission_request(job, submit)?;
    let claimed = submitted_answer(submit)?;
    // One scoring pass settles an honest answer; anything it cannot confirm is re-generated,
    // so the verdict is check_greedy's either way.
    check_greedy_scored(engine, &request, &claimed).map(|scored| scored.check)
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

/// The engine request of the chat job `job` that `submit` answers.
fn submission_request(job: &Job, submit: &MinerSubmit) -> Result<ChatRequest> {
    if submit.job_id != job.job_id {
        return Err(VerifyError::NoJob { job_id: submit.job_id.clone(), miner_id: submit.miner_id.to_string() });
    }
    // The seed does not change the prompt, the limits or a greedy answer; a fixed one keeps
    // the request deterministic.
    let clamped = MinerLimits::default()
        .clamp(job, || 0)
        .map_err(|e| VerifyError::MalformedJob { job_id: job.job_id.clone(), source: Box::new(e) })?;
    let JobParams::Llm(params) = &clamped.params else {
        return Err(VerifyError::NotChatResult { job_id: job.job_id.clone() });
    };
    chat_request(params).map_err(|e| VerifyError::Inference { reason: e.to_string() })
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
