//! Greedy answers re-checked in one teacher-forced pass instead of a re-generation.
//!
//! On this crate's CPU body [`ChatEngine::score`] gives, at every position of an answer, the
//! logits generation saw, bit for bit (one forward pass, same kernels, same sums). A greedy
//! answer is the model's only when each of its tokens is the first largest logit where it
//! stands and the model then ends it (an end-of-generation token, or `max_tokens` reached), so
//! checking that costs a prompt-sized pass (a quarter of generating 256 tokens, see
//! `benches/benches/verify_cost.rs`), not a re-generation.
//!
//! The one-pass verdict is only trusted where it is provably the re-generation's: the answer
//! re-encodes to plain-text tokens whose bytes are exactly the claimed text, contains none of
//! the request's stop strings, and the request sets no penalty (penalties move the argmax with
//! the history). Anything else, and every answer the pass does not confirm (a token that is not
//! the argmax, an end the model would not make), goes to [`super::check_greedy`], which
//! re-generates: the scoring pass can only spare work, never change a verdict. On candle's
//! bodies (no one-pass scoring) the pass still runs token by token and the verdict still
//! holds, at generation's cost.

use heurist_inference::{ChatEngine, ChatRequest, TokenEvent, TokenObserver};

use super::{GreedyCheck, check_greedy};
use crate::error::{Result, VerifyError};

/// The result of [`check_greedy_scored`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoredGreedyCheck {
    /// The verdict, as [`check_greedy`] gives it.
    pub check: GreedyCheck,
    /// Whether the scoring pass settled it (`false`: the answer was re-generated).
    pub one_pass: bool,
}

/// Checks that `claimed` is the greedy answer to `request` on `engine`: one scoring pass when
/// it confirms the answer, else a re-generation (see the module docs).
///
/// A sampled request is [`VerifyError::NotGreedy`].
pub fn check_greedy_scored(engine: &ChatEngine, request: &ChatRequest, claimed: &str) -> Result<ScoredGreedyCheck> {
    if request.temperature != 0.0 {
        return Err(VerifyError::NotGreedy { temperature: request.temperature });
    }
    if let Some(tokens) = confirmed_by_scoring(engine, request, claimed)? {
        let check = GreedyCheck {
            matches: true,
            reference: claimed.to_owned(),
            first_difference: None,
            reference_tokens: tokens,
        };
        return Ok(ScoredGreedyCheck { check, one_pass: true });
    }
    Ok(ScoredGreedyCheck { check: check_greedy(engine, request, claimed)?, one_pass: false })
}

/// `Some(tokens)` when one scoring pass proves `claimed` is the greedy answer of `tokens`
/// tokens; `None` when it cannot (the caller re-generates).
fn confirmed_by_scoring(engine: &ChatEngine, request: &ChatRequest, claimed: &str) -> Result<Option<usize>> {
    let params = request.sampling();
    let penalties = params.repetition_penalty != 1.0 || params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
    if penalties || claimed.is_empty() || request.stop.iter().any(|s| claimed.contains(s.as_str())) {
        return Ok(None);
    }
    let inference = |e: heurist_inference::InferenceError| VerifyError::Inference { reason: e.to_string() };
    let tokenizer = engine.tokenizer();
    let mut tokens = tokenizer.encode(claimed).map_err(inference)?;
    let mut bytes = Vec::with_capacity(claimed.len());
    for &id in &tokens {
        if tokenizer.is_control(id).map_err(inference)? || tokenizer.is_end_of_generation(id) {
            return Ok(None);
        }
        bytes.extend_from_slice(tokenizer.token_bytes(id).map_err(inference)?);
    }
    if bytes != claimed.as_bytes() || tokens.len() > request.max_tokens {
        return Ok(None);
    }
    let answer_len = tokens.len();
    // Generation stops at max_tokens; before it, the model must end the answer, which the
    // logits after the last token (an appended probe) say.
    let at_limit = answer_len == request.max_tokens;
    if !at_limit {
        tokens.push(tokenizer.eos_token_id());
    }
    let mut probe = ArgmaxProbe { answer_len, all_argmax: true, ends: at_limit, tokenizer };
    match engine.score_request(request, &tokens, &mut probe) {
        Ok(_) => Ok((probe.all_argmax && probe.ends).then_some(answer_len)),
        // Too long for the context with the probe, say: the re-generation decides.
        Err(_) => Ok(None),
    }
}

/// The scoring pass's observer: whether every answer token is its position's first argmax,
/// and whether the model ends the answer after the last one (the probe position).
struct ArgmaxProbe<'t> {
    answer_len: usize,
    all_argmax: bool,
    ends: bool,
    tokenizer: &'t heurist_inference::Tokenizer,
}

impl ArgmaxProbe<'_> {
    fn absorb(&mut self, event: &TokenEvent<'_>, best: Option<u32>) {
        if event.index < self.answer_len {
            self.all_argmax &= best == Some(event.token_id);
        } else {
            self.ends = best.is_some_and(|b| self.tokenizer.is_end_of_generation(b));
        }
    }
}

impl TokenObserver for ArgmaxProbe<'_> {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        self.absorb(event, first_argmax(event.logits));
    }

    /// A chunk's argmaxes (a scan of the vocabulary each) on all threads, then in order.
    fn on_tokens(&mut self, events: &[TokenEvent<'_>]) {
        use rayon::prelude::*;
        let best: Vec<Option<u32>> = events.par_iter().map(|e| first_argmax(e.logits)).collect();
        for (event, best) in events.iter().zip(best) {
            self.absorb(event, best);
        }
    }
}

/// The first index of the largest logit, the engine's greedy pick; `None` with a NaN.
fn first_argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            return None;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_largest_and_refuses_nan() {
        assert_eq!(first_argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(first_argmax(&[f32::NEG_INFINITY, -2.0]), Some(1));
        assert_eq!(first_argmax(&[0.0, f32::NAN]), None);
        assert_eq!(first_argmax(&[]), None);
    }
}
