//! The token usage a chat submission claims, recounted with the claimed model's tokenizer.
//!
//! Points are paid per token (`heurist-points`: input tokens counted with the model's own
//! tokenizer over the chat-templated prompt, plus output tokens), and the miner reports both
//! counts itself (`usage` beside the result of a `miner_submit`). Inflating them is a cheat
//! that needs no model at all, so it is checked first and cheaply: the job's messages are
//! rendered with the model's chat template and encoded, and so is the submitted answer.
//!
//! The recount is exact for the prompt, and for the answer up to what the text does not
//! show: the end-of-generation token an engine counts but does not print, the tokens of a
//! stop string it cut off, and a non-canonical tokenization (an engine that *samples* tokens
//! may spell a word in more pieces than the tokenizer's canonical encoding does). So a claim is
//! held to
//!
//! - prompt: `claimed ≤ recounted + prompt_slack` (0 by default: the template and the
//!   tokenizer are the model's own);
//! - completion: `claimed ≤ recounted + 1 + longest stop string in tokens +
//!   ⌈completion_ratio · recounted⌉`, with `completion_ratio = 0.1` (the tolerance the
//!   likelihood check also gives a re-encoding).
//!
//! The completion bound is deliberately not capped at the job's `max_tokens`: on the honest
//! calibration set (llama.cpp answers, `tools/make_llm_calibration.py`) llama.cpp reported
//! 49 and 50 completion tokens for a 48-token limit on three answers full of emoji, whose texts
//! re-encode to exactly as many tokens, and a cap accused them (the detection table's run of
//! 2026-11-25).
//!
//! Counts *below* the recount cost the miner points and are not flagged. [`UsageCheck`] is
//! the evidence, with every number; [`claimed_usage`] reads the claim from a submission.

use heurist_inference::{ChatEngine, ChatRequest};
use heurist_protocol::MinerSubmit;

use crate::error::{Result, VerifyError};

/// Token counts as a submission claims them (`usage` of a `miner_submit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimedUsage {
    /// Tokens of the templated prompt.
    pub prompt_tokens: u64,
    /// Tokens of the answer.
    pub completion_tokens: u64,
}

/// The tolerances of [`check_usage`] (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsageTolerance {
    /// Prompt tokens a claim may exceed the recount by.
    pub prompt_slack: u64,
    /// Share of the recounted answer a claim may exceed it by (non-canonical tokenization).
    pub completion_ratio: f64,
}

impl Default for UsageTolerance {
    /// No prompt slack; a tenth of the answer.
    fn default() -> Self {
        Self { prompt_slack: 0, completion_ratio: 0.1 }
    }
}

/// The recount of a claimed usage: the evidence of an inflated claim.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageCheck {
    /// Whether the claim is within the bounds.
    pub holds: bool,
    /// What the submission claims.
    pub claimed: ClaimedUsage,
    /// Prompt tokens recounted over the templated prompt.
    pub prompt_tokens: u64,
    /// Answer tokens recounted (canonical encoding of the text).
    pub completion_tokens: u64,
    /// The most prompt tokens an honest claim can name.
    pub max_prompt_tokens: u64,
    /// The most answer tokens an honest claim can name.
    pub max_completion_tokens: u64,
}

impl UsageCheck {
    /// A one-line account with the numbers, for a slash's evidence.
    pub fn evidence(&self) -> String {
        format!(
            "claimed usage {} prompt + {} completion tokens; recounted {} + {} with the model's tokenizer (at most {} + {} allowed)",
            self.claimed.prompt_tokens,
            self.claimed.completion_tokens,
            self.prompt_tokens,
            self.completion_tokens,
            self.max_prompt_tokens,
            self.max_completion_tokens,
        )
    }
}

/// Recounts `claimed`, the usage of `answer` to `request`, with `engine`'s template and
/// tokenizer (no forward pass).
pub fn check_usage(
    engine: &ChatEngine,
    request: &ChatRequest,
    answer: &str,
    claimed: ClaimedUsage,
    tolerance: &UsageTolerance,
) -> Result<UsageCheck> {
    let inference = |e: heurist_inference::InferenceError| VerifyError::Inference { reason: e.to_string() };
    if !(tolerance.completion_ratio.is_finite() && tolerance.completion_ratio >= 0.0) {
        return Err(VerifyError::InvalidClaim {
            field: "usage tolerance completion_ratio",
            value: tolerance.completion_ratio.to_string(),
            expected: "a finite share ≥ 0",
        });
    }
    let tokenizer = engine.tokenizer();
    // Rendered as generation renders it: with the job's tools, when it offers any.
    let prompt_tokens = engine.prompt_token_ids(request).map_err(inference)?.len() as u64;
    let completion_tokens = tokenizer.encode(answer).map_err(inference)?.len() as u64;
    let mut stop_tokens = 0;
    for s in &request.stop {
        stop_tokens = stop_tokens.max(tokenizer.encode(s).map_err(inference)?.len() as u64);
    }
    let slack = (tolerance.completion_ratio * completion_tokens as f64).ceil() as u64;
    let max_completion_tokens = completion_tokens + 1 + stop_tokens + slack;
    let max_prompt_tokens = prompt_tokens + tolerance.prompt_slack;
    Ok(UsageCheck {
        holds: claimed.prompt_tokens <= max_prompt_tokens && claimed.completion_tokens <= max_completion_tokens,
        claimed,
        prompt_tokens,
        completion_tokens,
        max_prompt_tokens,
        max_completion_tokens,
    })
}

/// The usage `submit` claims (its typed `usage`, which decoding already checked: two
/// non-negative integers); `None` when it claims none.
pub fn claimed_usage(submit: &MinerSubmit) -> Result<Option<ClaimedUsage>> {
    Ok(submit.usage.map(|u| ClaimedUsage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens }))
}
