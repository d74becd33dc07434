//! Sampled chat answers of this project's engine re-checked by replaying the seeded sampler.
//!
//! A sampled answer is not a function of the prompt, but it is a function of the prompt and
//! the seed when the sampler is known: `heurist-inference` draws one uniform per token from a
//! generator seeded with the job's seed ([`SamplerReplay`]). So for an answer that claims to
//! come from that sampler, one teacher-forced pass of the claimed model gives the logits of
//! every position, and replaying the draws on them must land, at every position, inside the
//! probability range of the token the answer has there. Another model (even a close one:
//! perturbed or re-quantised weights) moves the ranges, and at some position the draw falls
//! outside; so do another temperature, another seed, and text not drawn at all. The evidence
//! names the position, the claimed and the drawn token and how far the draw fell outside.
//!
//! Two things make an honest answer miss without cheating, and both are handled:
//! - **numerics**: a verifier on other kernels (another CPU, a GPU) sees the same
//!   distributions up to rounding, so a draw may fall just past a range boundary. Misses below
//!   [`SeededThresholds::max_miss`] of probability mass are not counted.
//! - **tokenization**: the answer is re-encoded with the model's tokenizer, and a sampler may
//!   have drawn a non-canonical split of the same text (at temperature 1, often). Where the
//!   drawn token spells the answer's next bytes, the replay follows it and scores the answer
//!   again (a prefill each time, at most eight); if it still misses, the verifier re-generates
//!   with the seed (one generation, only then) and accepts an identical text.
//!
//! This check is only for answers whose miner says it ran this sampler. vLLM and llama.cpp
//! draw other tokens from the same seed: their answers are judged by their likelihood
//! ([`super::likelihood`]), which cannot tell a close substitute from the claimed model in a
//! short answer (see the detection table in the crate docs).

use heurist_inference::{ChatEngine, ChatRequest, SamplerReplay, TokenEvent, TokenObserver};

use crate::error::{Result, VerifyError};

/// How many times the replay follows a split of the answer other than the canonical one
/// before it falls back to re-generating.
const MAX_RESPLITS: usize = 8;

/// The bar of [`check_seeded`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeededThresholds {
    /// Misses of at most this much probability mass are rounding, not evidence.
    pub max_miss: f64,
}

impl Default for SeededThresholds {
    /// `1e-4`: a hundred times the rounding of f32 logits through a softmax over SmolLM2's
    /// vocabulary, and far below what another model moves (its misses are mostly above 1e-2).
    fn default() -> Self {
        Self { max_miss: 1e-4 }
    }
}

/// Where a replayed draw fell outside the claimed token's range.
#[derive(Clone, Debug, PartialEq)]
pub struct SeededMiss {
    /// Index of the token in the re-encoded answer (the answer's length for the end).
    pub position: usize,
    /// The token the answer has there (the end-of-generation token for the end).
    pub claimed: u32,
    /// The token the sampler draws there from the claimed model.
    pub drawn: Option<u32>,
    /// How far outside the claimed token's range the draw fell, in probability mass.
    pub miss: f64,
}

/// The outcome of [`check_seeded`].
#[derive(Clone, Debug, PartialEq)]
pub struct SeededCheck {
    /// Whether the answer is what the claimed model and sampler draw with the job's seed.
    pub holds: bool,
    /// Tokens of the answer as the replay last split it.
    pub tokens: usize,
    /// How many times the replay followed a non-canonical split the sampler drew.
    pub resplits: usize,
    /// Where the replay missed by more than the bar, on its last split of the answer; `None`
    /// when every draw landed on the answer's token.
    pub first_miss: Option<SeededMiss>,
    /// Whether the verifier re-generated the answer (the replay missed) to compare texts.
    pub regenerated: bool,
    /// Why the answer does not hold, with the numbers; empty when it holds.
    pub reasons: Vec<String>,
}

/// Replays the draws of every scored position.
struct Replay<'a> {
    replay: SamplerReplay,
    /// Tokens that end an answer: end of generation, or the start of a stop string.
    ends: &'a [bool],
    answer_len: usize,
    max_miss: f64,
    first_miss: Option<SeededMiss>,
}

impl TokenObserver for Replay<'_> {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        let step = self.replay.step(event.logits, event.token_id);
        if self.first_miss.is_some() {
            return;
        }
        let ended = event.index >= self.answer_len;
        // At the end probe any ending token is the claimed one: the sampler drew an end of
        // generation, or the first token of a stop string (cut from the text).
        let drew_an_end = ended && step.drawn.is_some_and(|d| self.ends.get(d as usize).copied().unwrap_or(false));
        let miss = if drew_an_end { 0.0 } else { step.miss() };
        if miss > self.max_miss {
            self.first_miss = Some(SeededMiss { position: event.index, claimed: step.claimed, drawn: step.drawn, miss });
        }
    }
}

/// Replays the seeded sampler of `request` over `claimed`, the answer a miner running this
/// project's engine says it sampled, on `engine` (the claimed model).
///
/// `ran_to_limit`: the miner says generation stopped at `max_tokens`; otherwise the draw after
/// the last token must end the answer. A request without a seed, or a greedy one, is
/// [`VerifyError::NotSeeded`] (greedy answers: [`super::check_greedy`]).
pub fn check_seeded(
    engine: &ChatEngine,
    request: &ChatRequest,
    claimed: &str,
    ran_to_limit: bool,
    thresholds: &SeededThresholds,
) -> Result<SeededCheck> {
    let seed = match request.seed {
        Some(seed) if request.temperature.is_finite() && request.temperature > 0.0 => seed,
        seed => return Err(VerifyError::NotSeeded { temperature: request.temperature, seed }),
    };
    let inference = |e: heurist_inference::InferenceError| VerifyError::Inference { reason: e.to_string() };
    let tokenizer = engine.tokenizer();
    let ends = super::likelihood::ending_tokens(tokenizer, &request.stop);
    let prompt = engine.prompt_token_ids(request).map_err(inference)?;
    let text = claimed.as_bytes();
    let mut tokens = tokenizer.encode(claimed).map_err(inference)?;
    let mut resplits = 0;
    let miss = loop {
        let answer_len = tokens.len();
        let at_limit = answer_len >= request.max_tokens || ran_to_limit;
        let mut fed = tokens.clone();
        if !at_limit {
            fed.push(tokenizer.eos_token_id());
        }
        let mut replay = Replay {
            replay: SamplerReplay::new(request.sampling(), seed, &prompt),
            ends: &ends,
            answer_len,
            max_miss: thresholds.max_miss,
            first_miss: None,
        };
        engine.score_request(request, &fed, &mut replay).map_err(inference)?;
        let Some(m) = replay.first_miss else {
            return Ok(SeededCheck { holds: true, tokens: answer_len, resplits, first_miss: None, regenerated: false, reasons: Vec::new() });
        };
        // A sampler may draw another split of the same text than the canonical encoding
        // ("S" + "mell" where the tokenizer gives "Sm" + "ell"). When the drawn token spells
        // the answer's next bytes, follow it: the answer re-encoded after it, scored again.
        let resplit = m.drawn.filter(|_| m.position < answer_len).and_then(|drawn| {
            let before: Vec<u8> = tokens[..m.position]
                .iter()
                .flat_map(|&t| tokenizer.token_bytes(t).unwrap_or_default().to_vec())
                .collect();
            let spelled = [before.as_slice(), tokenizer.token_bytes(drawn).ok()?].concat();
            let rest = std::str::from_utf8(text.strip_prefix(spelled.as_slice())?).ok()?;
            let mut next = tokens[..m.position].to_vec();
            next.push(drawn);
            next.extend(tokenizer.encode(rest).ok()?);
            Some(next)
        });
        match resplit {
            Some(next) if resplits < MAX_RESPLITS => {
                resplits += 1;
                tokens = next;
            }
            _ => break m,
        }
    };
    let answer_len = tokens.len();
    // The replay missed: either the answer is not the sampler's, or it is, split into tokens
    // differently from the canonical re-encoding. One generation tells them apart.
    let regenerated = engine.chat(request).map_err(inference)?;
    if regenerated.text == claimed {
        return Ok(SeededCheck { holds: true, tokens: answer_len, resplits, first_miss: Some(miss), regenerated: true, reasons: Vec::new() });
    }
    let token_text = |id: Option<u32>| id.and_then(|id| tokenizer.decode(&[id]).ok()).unwrap_or_else(|| "none".into());
    let at = super::first_difference(claimed, &regenerated.text).unwrap_or(0);
    let reasons = vec![format!(
        "seed {seed} at temperature {}: at token {} of {answer_len} the sampler draws {:?} where the answer has {:?} \
         (the draw falls {:.1e} of probability outside it), and re-generating gives another text from byte {at}",
        request.temperature,
        miss.position,
        token_text(miss.drawn),
        token_text(Some(miss.claimed)),
        miss.miss,
    )];
    Ok(SeededCheck { holds: false, tokens: answer_len, resplits, first_miss: Some(miss), regenerated: true, reasons })
}
