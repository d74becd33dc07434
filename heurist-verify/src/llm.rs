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
//! tolerance on rescored likelihoods instead, which comes with the teacher-forced scoring
//! call of `heurist-inference`. Sampled jobs are not judged here.

use heurist_inference::{ChatEngine, ChatRequest};

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
