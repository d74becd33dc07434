//! Sampled chat answers judged by their likelihood under the claimed model.
//!
//! A sampled answer (temperature `T > 0`) is not a function of the prompt, and another
//! engine (vLLM, llama.cpp) draws other tokens from the same seed, so it cannot be
//! re-generated. It can be *rescored*: one teacher-forced pass of the claimed model over the
//! answer ([`ChatEngine::score`]) gives, at every position `i`, the tempered distribution
//! `p_i = softmax(logits_i / T)` the honest miner sampled from. Three tests, each with an
//! error rate on honest answers that is bounded or calibrated:
//!
//! - **impossible token**: some claimed token has `p_i(x_i) < ε` (`ε = 1e-14`). Whatever
//!   engine sampled honestly, the chance of drawing any token below `ε` at one position is at
//!   most `V·ε` (`V` tokens in the vocabulary: 49,152 for SmolLM2, so 5e-10), a bound that
//!   engine numerics (log-probabilities off by a few hundredths) do not move. Random text,
//!   another model's text and edited text fail it.
//! - **likelihood z-score**: `s_i = ln p_i(x_i)` has, under honest sampling, mean
//!   `μ_i = -H(p_i)` and variance `σ_i² = Var_{p_i}[ln p_i]`; `Z = Σ(s_i - μ_i) / sqrt(Σσ_i²)`
//!   is a sum of martingale differences, close to a standard normal for answers of more than
//!   a few tokens. Answers sampled at a lower temperature (or greedily) are too likely
//!   (`Z ≫ 0`), at a higher temperature or from a perturbed model too unlikely (`Z ≪ 0`):
//!   flagged when `|Z| > 6` (a normal exceeds it with probability 2e-9; the table in the crate
//!   docs reports what honest answers from our engine and from llama.cpp actually reach).
//! - **premature end**: an answer that stopped before `max_tokens` must have stopped because
//!   the model ended it (an end-of-generation token, or a stop string). The probability of
//!   that end after the last claimed token is summed over every end-of-generation token and
//!   every token that begins a stop string; below `δ = 1e-7` the answer was cut. An honest
//!   answer ends there with probability at most `δ` per position.
//!
//! The answer is re-encoded with the model's tokenizer. An engine may have sampled a
//! non-canonical tokenization of the same text; its canonical re-encoding is at most as long,
//! so an answer the miner says hit `max_tokens` is not held to the end test when its
//! re-encoding is within a tenth of the limit. Top-k, top-p and penalties are not modelled
//! (the network's jobs send a temperature only; vLLM's defaults then sample the whole
//! tempered distribution): a request using them is refused, not misjudged.

use heurist_inference::{ChatEngine, ChatRequest, TokenEvent, TokenObserver, Tokenizer};

use crate::error::{Result, VerifyError};

/// The bars of [`check_sampled`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampledThresholds {
    /// Flag when `|Z|` exceeds this.
    pub max_abs_z: f64,
    /// `ln ε`: flag a claimed token less likely than this.
    pub min_token_log_prob: f64,
    /// `ln δ`: flag an early end less likely than this.
    pub min_end_log_prob: f64,
}

impl Default for SampledThresholds {
    /// `|Z| > 6`, `ε = 1e-14`, `δ = 1e-7` (see the module docs).
    fn default() -> Self {
        Self { max_abs_z: 6.0, min_token_log_prob: (1e-14f64).ln(), min_end_log_prob: (1e-7f64).ln() }
    }
}

/// The rescoring of a sampled answer.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledCheck {
    /// Whether the answer holds (no reason against it).
    pub holds: bool,
    /// Tokens of the re-encoded answer.
    pub tokens: usize,
    /// The likelihood z-score.
    pub z: f64,
    /// The least likely claimed token: its index and tempered log-probability.
    pub least_likely: Option<(usize, f64)>,
    /// Tempered log-probability that the model ends the answer where it ends; `None` when
    /// the answer ran to `max_tokens`.
    pub end_log_prob: Option<f64>,
    /// Why the answer does not hold, with the numbers; empty when it holds.
    pub reasons: Vec<String>,
}

/// Per-position figures, gathered while the engine scores.
struct Tally<'a> {
    temperature: f64,
    /// Whether each token id ends the answer (end of generation or a stop string's start).
    ends: &'a [bool],
    /// Positions scored as the answer's tokens (the rest is the appended end probe).
    answer_len: usize,
    sum_dev: f64,
    sum_var: f64,
    least: Option<(usize, f64)>,
    end_log_prob: Option<f64>,
}

/// What one scored position adds to a [`Tally`]; computed apart from the others, so a batch
/// of positions is spread over threads.
enum Figures {
    /// An answer token: its tempered log-probability, and the mean and variance of that
    /// statistic under honest sampling.
    Token { index: usize, log_prob: f64, mean: f64, variance: f64 },
    /// The appended end probe: the log-probability that the model ends the answer here.
    End(f64),
}

impl Tally<'_> {
    fn figures(&self, event: &TokenEvent<'_>) -> Figures {
        let t = self.temperature;
        if event.index >= self.answer_len {
            let max = heurist_inference::fastmath::max_finite(event.logits);
            let scaled = |l: f32| if l.is_nan() { f64::NEG_INFINITY } else { (f64::from(l) - f64::from(max)) / t };
            let z_sum: f64 = event.logits.iter().map(|&l| scaled(l).exp()).sum();
            let end: f64 =
                event.logits.iter().zip(self.ends).filter(|(_, e)| **e).map(|(&l, _)| scaled(l).exp()).sum::<f64>();
            return Figures::End(end.ln() - z_sum.ln());
        }
        // One exponential per logit (this is most of a check's cost beside the scoring pass).
        let m = heurist_inference::fastmath::tempered_moments(event.logits, t);
        let log_prob = event.logits.get(event.token_id as usize).map_or(f64::NEG_INFINITY, |&l| {
            if l.is_nan() { f64::NEG_INFINITY } else { (f64::from(l) - f64::from(m.max)) / t - m.log_norm() }
        });
        Figures::Token { index: event.index, log_prob, mean: m.mean_log_prob(), variance: m.var_log_prob() }
    }

    /// Adds one position's figures; positions come in order, so the sums do not depend on how
    /// the figures were computed.
    fn absorb(&mut self, figures: Figures) {
        match figures {
            Figures::End(lp) => self.end_log_prob = Some(lp),
            Figures::Token { index, log_prob, mean, variance } => {
                self.sum_dev += log_prob - mean;
                self.sum_var += variance;
                if self.least.is_none_or(|(_, v)| log_prob < v) {
                    self.least = Some((index, log_prob));
                }
            }
        }
    }
}

impl TokenObserver for Tally<'_> {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        let figures = self.figures(event);
        self.absorb(figures);
    }

    fn on_tokens(&mut self, events: &[TokenEvent<'_>]) {
        use rayon::prelude::*;
        let this = &*self;
        let figures: Vec<Figures> = events.par_iter().map(|e| this.figures(e)).collect();
        for f in figures {
            self.absorb(f);
        }
    }
}

/// Whether each token id ends an answer: an end-of-generation token, or a token that begins a
/// stop string (or contains one from its start).
pub(crate) fn ending_tokens(tokenizer: &Tokenizer, stop: &[String]) -> Vec<bool> {
    (0..tokenizer.vocab_size())
        .map(|id| {
            let id = id as u32;
            tokenizer.is_end_of_generation(id)
                || tokenizer.token_bytes(id).is_ok_and(|b| {
                    !b.is_empty() && stop.iter().any(|s| s.as_bytes().starts_with(b) || b.starts_with(s.as_bytes()))
                })
        })
        .collect()
}

/// Rescores `claimed`, the answer to the sampled `request`, on `engine`.
///
/// `ran_to_limit`: the miner says generation stopped at `max_tokens` (finish reason
/// `length`). A greedy request is [`VerifyError::NotSampled`] (use [`super::check_greedy`]);
/// one with top-k, top-p, min-p or a penalty is [`VerifyError::UnmodelledSampling`].
pub fn check_sampled(
    engine: &ChatEngine,
    request: &ChatRequest,
    claimed: &str,
    ran_to_limit: bool,
    thresholds: &SampledThresholds,
) -> Result<SampledCheck> {
    if !(request.temperature.is_finite() && request.temperature > 0.0) {
        return Err(VerifyError::NotSampled { temperature: request.temperature });
    }
    let neutral = heurist_inference::SamplingParams::default();
    for (name, value, off) in [
        ("top_p", request.top_p, neutral.top_p),
        ("top_k", request.top_k as f64, neutral.top_k as f64),
        ("min_p", request.min_p, neutral.min_p),
        ("repetition_penalty", request.repetition_penalty, neutral.repetition_penalty),
        ("presence_penalty", request.presence_penalty, neutral.presence_penalty),
        ("frequency_penalty", request.frequency_penalty, neutral.frequency_penalty),
    ] {
        if value != off {
            return Err(VerifyError::UnmodelledSampling { name, value });
        }
    }
    let inference = |e: heurist_inference::InferenceError| VerifyError::Inference { reason: e.to_string() };
    let tokenizer = engine.tokenizer();
    let mut tokens = tokenizer.encode(claimed).map_err(inference)?;
    let answer_len = tokens.len();
    let limit = request.max_tokens;
    let at_limit = answer_len >= limit || (ran_to_limit && answer_len * 10 + 10 >= limit * 9);
    let ends = ending_tokens(tokenizer, &request.stop);
    if !at_limit {
        // One more position, scored under the logits after the last claimed token.
        tokens.push(tokenizer.eos_token_id());
    }
    let mut tally = Tally {
        temperature: request.temperature,
        ends: &ends,
        answer_len,
        sum_dev: 0.0,
        sum_var: 0.0,
        least: None,
        end_log_prob: None,
    };
    engine.score_request(request, &tokens, &mut tally).map_err(inference)?;
    let z = if tally.sum_var > 0.0 { tally.sum_dev / tally.sum_var.sqrt() } else { 0.0 };
    let mut reasons = Vec::new();
    if let Some((index, lp)) = tally.least.filter(|(_, lp)| *lp < thresholds.min_token_log_prob) {
        reasons.push(format!(
            "token {index} of {answer_len} has probability {:.1e} at temperature {} under the claimed model (below {:.0e}: no honest sampler draws it)",
            lp.exp(),
            request.temperature,
            thresholds.min_token_log_prob.exp()
        ));
    }
    if z.abs() > thresholds.max_abs_z {
        reasons.push(format!(
            "likelihood z-score {z:.1} over {answer_len} tokens at temperature {} (honest answers stay within ±{}): {}",
            request.temperature,
            thresholds.max_abs_z,
            if z > 0.0 { "too likely: sampled colder or greedily" } else { "too unlikely: another model or a hotter sampler" }
        ));
    }
    if let Some(lp) = tally.end_log_prob.filter(|lp| *lp < thresholds.min_end_log_prob) {
        reasons.push(format!(
            "the answer stops after {answer_len} of {limit} tokens where the model ends it with probability {:.1e} (below {:.0e}): cut short",
            lp.exp(),
            thresholds.min_end_log_prob.exp()
        ));
    }
    Ok(SampledCheck {
        holds: reasons.is_empty(),
        tokens: answer_len,
        z,
        least_likely: tally.least,
        end_log_prob: tally.end_log_prob,
        reasons,
    })
}
