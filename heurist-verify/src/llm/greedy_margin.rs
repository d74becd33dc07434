//! Greedy answers from any engine, judged in one teacher-forced pass with a tolerance for the
//! numerical noise between engines.
//!
//! A greedy answer is the sequence of each position's largest logit, *on the miner's
//! numerics*. Another engine (llama.cpp with its f16 KV cache, transformers in bf16, vLLM's
//! GPU kernels) computes the same logits up to a rounding noise of a few tenths of a logit,
//! so where two tokens nearly tie it may pick the one that is second here, and from there its
//! answer follows its own path. Re-generating and comparing texts accuses every such honest
//! answer; this check does not re-generate. One scoring pass of the claimed model over the
//! answer gives, at each position `i`, the *gap* `g_i = max(logits_i) - logits_i[x_i] ≥ 0`
//! of the claimed token below the best one there. Teacher forcing makes the pass follow the
//! answer's own path after a near-tie, so an honest answer has gaps of zero everywhere but at
//! its few near-ties, each no larger than the engines' disagreement. Three bars, set on honest
//! answers of other engines ([`GreedyThresholds::default`] says which):
//!
//! - **token gap**: no claimed token more than `max_token_gap` logits below its position's
//!   best. Another prompt's answer, random or edited text, a sampled answer at any useful
//!   temperature pick such tokens.
//! - **total gap**: `Σ g_i` at most `max_total_gap`. Honest answers meet a few near-ties; a
//!   substitute model or a sampler departs from the claimed model's argmax at many positions.
//! - **end gap**: an answer that stops before `max_tokens` must stop where the model would:
//!   the best ending token (end of generation, or a stop string's first token) at most
//!   `max_end_gap` below the best token after the answer. A cut answer fails it.
//!
//! The answer is re-encoded with the model's tokenizer. An engine may have produced a split of
//! the same text other than the canonical one (its argmax was a shorter token); where the
//! model's best token at a departure spells the answer's next bytes, the check scores that
//! split too: splitting where it lowers the total gap, and following every such split in a
//! chain; the split departing least is judged (at most [`MAX_RESPLITS`] more passes, only for
//! answers with such a departure). An engine that split one word otherwise sees another
//! context from there on:
//! llama.cpp's `" D" + "inos" + "aur"` where the tokenizer gives `" Din" + "os" + "aur"` moved
//! later logits of SmolLM2 by up to 2 logits in the detection table's run.

use heurist_inference::{ChatEngine, ChatRequest, TokenEvent, TokenObserver, Tokenizer};

use crate::error::{Result, VerifyError};

/// How many other splits of the answer the check scores before it keeps the best one so far.
pub const MAX_RESPLITS: usize = 12;

/// The bars of [`check_greedy_margin`], in logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GreedyThresholds {
    /// Largest gap of one claimed token below its position's best logit.
    pub max_token_gap: f32,
    /// Largest sum of the gaps over the answer.
    pub max_total_gap: f32,
    /// Largest gap of the best ending token below the best token where the answer stops.
    pub max_end_gap: f32,
}

impl GreedyThresholds {
    /// Bars that never reject: for collecting the statistics of a calibration set.
    pub const PERMISSIVE: Self = Self { max_token_gap: f32::INFINITY, max_total_gap: f32::INFINITY, max_end_gap: f32::INFINITY };
}

impl Default for GreedyThresholds {
    /// Token gap 1.61, total 2.95, end gap 1.0 logits: calibrated on 300 honest greedy answers
    /// of other engines on SmolLM2-135M-Instruct (llama.cpp with f16 and with f32 KV cache,
    /// transformers in f32 and in bf16; the calibration prompts of `tests/fixtures/honest/`,
    /// disjoint from the detection table's) by `examples/llm_detection_table.rs --calibrate`:
    /// each bar is twice the worst calibration answer's figure (token gap 0.80 and total 1.48,
    /// both transformers bf16; end gap 0.28), and at least 1 logit. The detection table in
    /// [`crate::detection`] judges other prompts with them.
    fn default() -> Self {
        Self { max_token_gap: 1.61, max_total_gap: 2.95, max_end_gap: 1.0 }
    }
}

/// The outcome of [`check_greedy_margin`].
#[derive(Clone, Debug, PartialEq)]
pub struct GreedyMarginCheck {
    /// Whether the answer holds (no reason against it).
    pub holds: bool,
    /// Tokens of the answer as the kept split has it.
    pub tokens: usize,
    /// Positions where the claimed token is not the model's best.
    pub departures: usize,
    /// The largest gap: its position and size in logits (`None` for an empty answer).
    pub max_gap: Option<(usize, f32)>,
    /// The sum of the gaps.
    pub total_gap: f32,
    /// The best ending token's gap after the answer; `None` when it ran to `max_tokens`.
    pub end_gap: Option<f32>,
    /// How many other splits of the answer were scored.
    pub resplits: usize,
    /// Why the answer does not hold, with the numbers; empty when it holds.
    pub reasons: Vec<String>,
}

/// The gaps of one scored split.
#[derive(Clone, Debug, Default)]
struct Gaps {
    /// Per answer position: the gap and the model's best token there.
    positions: Vec<(f32, Option<u32>)>,
    end_gap: Option<f32>,
}

impl Gaps {
    fn total(&self) -> f32 {
        self.positions.iter().map(|(g, _)| g).sum()
    }
}

/// The scoring pass's observer.
struct GapProbe<'a> {
    answer_len: usize,
    ends: &'a [bool],
    gaps: Gaps,
}

/// What one scored position yields; computed apart from the others so a chunk is spread
/// over threads.
enum Figure {
    Token(f32, Option<u32>),
    End(f32),
}

impl GapProbe<'_> {
    fn figure(&self, event: &TokenEvent<'_>) -> Figure {
        let logits = event.logits;
        let (best_id, best) = best(logits);
        if event.index >= self.answer_len {
            let end = logits
                .iter()
                .zip(self.ends)
                .filter(|(l, e)| **e && !l.is_nan())
                .map(|(&l, _)| l)
                .fold(f32::NEG_INFINITY, f32::max);
            return Figure::End(gap(best, end));
        }
        let claimed = logits.get(event.token_id as usize).copied().unwrap_or(f32::NAN);
        Figure::Token(gap(best, claimed), best_id)
    }

    fn absorb(&mut self, figure: Figure) {
        match figure {
            Figure::Token(g, best) => self.gaps.positions.push((g, best)),
            Figure::End(g) => self.gaps.end_gap = Some(g),
        }
    }
}

impl TokenObserver for GapProbe<'_> {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        let f = self.figure(event);
        self.absorb(f);
    }

    fn on_tokens(&mut self, events: &[TokenEvent<'_>]) {
        use rayon::prelude::*;
        let this = &*self;
        let figures: Vec<Figure> = events.par_iter().map(|e| this.figure(e)).collect();
        for f in figures {
            self.absorb(f);
        }
    }
}

/// The first largest finite logit and its index; `(None, NaN)` when there is none.
fn best(logits: &[f32]) -> (Option<u32>, f32) {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_nan() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map_or((None, f32::NAN), |(i, l)| (Some(i as u32), l))
}

/// `best - value`, infinite where either is not a number (a NaN logit is no evidence for the
/// answer).
fn gap(best: f32, value: f32) -> f32 {
    let g = best - value;
    if g.is_nan() { f32::INFINITY } else { g.max(0.0) }
}

/// Checks that `claimed` is a greedy answer to `request` on `engine`'s model, up to the
/// numerical noise between engines (see the module docs).
///
/// `ran_to_limit`: the miner says generation stopped at `max_tokens` (finish reason
/// `length`); an answer whose re-encoding is well short of the limit is held to the end test
/// anyway. A sampled request is [`VerifyError::NotGreedy`].
pub fn check_greedy_margin(
    engine: &ChatEngine,
    request: &ChatRequest,
    claimed: &str,
    ran_to_limit: bool,
    thresholds: &GreedyThresholds,
) -> Result<GreedyMarginCheck> {
    if request.temperature != 0.0 {
        return Err(VerifyError::NotGreedy { temperature: request.temperature });
    }
    let inference = |e: heurist_inference::InferenceError| VerifyError::Inference { reason: e.to_string() };
    let tokenizer = engine.tokenizer();
    let ends = super::likelihood::ending_tokens(tokenizer, &request.stop);
    let limit = request.max_tokens;
    let score = |tokens: &[u32]| -> Result<Gaps> {
        let answer_len = tokens.len();
        let at_limit = answer_len >= limit || (ran_to_limit && answer_len * 10 + 10 >= limit * 9);
        let mut fed = tokens.to_vec();
        if !at_limit {
            fed.push(tokenizer.eos_token_id());
        }
        let mut probe = GapProbe { answer_len, ends: &ends, gaps: Gaps::default() };
        engine.score_request(request, &fed, &mut probe).map_err(inference)?;
        Ok(probe.gaps)
    };
    let mut tokens = tokenizer.encode(claimed).map_err(inference)?;
    let mut gaps = score(&tokens)?;
    let cost = |g: &Gaps| g.total() + g.end_gap.unwrap_or(0.0);
    let mut resplits = 0;
    // Other splits, two ways, each at the departures in turn where the model's best token
    // spells the answer's next bytes: (1) split there when that lowers the answer's total gap,
    // and go on from the kept split; (2) follow every such split in a chain (an engine that
    // split one word otherwise sees another context from there on, so one resplit may only
    // pay off with the next). Every split spells the same text; the one departing least is
    // judged.
    let canonical = (tokens.clone(), gaps.clone());
    for chain in [false, true] {
        let (mut current, mut current_gaps) = canonical.clone();
        let mut from = 0;
        for _ in 0..MAX_RESPLITS / 2 {
            let Some((at, next)) = resplit(tokenizer, claimed, &current, &current_gaps, from) else { break };
            resplits += 1;
            let next_gaps = score(&next)?;
            from = at + 1;
            if cost(&next_gaps) < cost(&gaps) {
                (tokens, gaps) = (next.clone(), next_gaps.clone());
            }
            if chain || cost(&next_gaps) < cost(&current_gaps) {
                (current, current_gaps) = (next, next_gaps);
            }
        }
    }
    Ok(verdict(&tokens, &gaps, resplits, limit, thresholds))
}

/// The answer split again at its first departure from the model's best token at or after
/// position `from` where that token spells the answer's next bytes: the position and the new
/// split; `None` when there is no such departure.
fn resplit(tokenizer: &Tokenizer, claimed: &str, tokens: &[u32], gaps: &Gaps, from: usize) -> Option<(usize, Vec<u32>)> {
    let mut offset = 0;
    for (at, (&token, &(gap, best))) in tokens.iter().zip(&gaps.positions).enumerate() {
        let here = offset;
        offset += tokenizer.token_bytes(token).map_or(0, <[u8]>::len);
        let Some(best) = best.filter(|_| at >= from && gap > 0.0) else { continue };
        let Ok(bytes) = tokenizer.token_bytes(best) else { continue };
        let Some(rest) = claimed.as_bytes().get(here..).and_then(|r| r.strip_prefix(bytes)) else { continue };
        let Ok(rest) = std::str::from_utf8(rest) else { continue };
        let Ok(tail) = tokenizer.encode(rest) else { continue };
        let mut next = tokens[..at].to_vec();
        next.push(best);
        next.extend(tail);
        return Some((at, next));
    }
    None
}

fn verdict(tokens: &[u32], gaps: &Gaps, resplits: usize, limit: usize, t: &GreedyThresholds) -> GreedyMarginCheck {
    let answer_len = tokens.len();
    let max_gap = gaps
        .positions
        .iter()
        .enumerate()
        .map(|(i, &(g, _))| (i, g))
        .fold(None, |m: Option<(usize, f32)>, (i, g)| if m.is_none_or(|(_, b)| g > b) { Some((i, g)) } else { m });
    let total_gap = gaps.total();
    let departures = gaps.positions.iter().filter(|(g, _)| *g > 0.0).count();
    let mut reasons = Vec::new();
    if let Some((i, g)) = max_gap.filter(|(_, g)| *g > t.max_token_gap) {
        reasons.push(format!(
            "token {i} of {answer_len} is {g:.2} logits below the claimed model's best there (greedy answers of other engines stay within {}): not the model's greedy answer",
            t.max_token_gap
        ));
    }
    if total_gap > t.max_total_gap {
        reasons.push(format!(
            "the answer departs from the claimed model's best token at {departures} of {answer_len} positions, {total_gap:.2} logits in all (honest engines stay within {}): another model or a sampler",
            t.max_total_gap
        ));
    }
    if let Some(g) = gaps.end_gap.filter(|g| *g > t.max_end_gap) {
        reasons.push(format!(
            "the answer stops after {answer_len} of {limit} tokens where the model's best ending token is {g:.2} logits below its best (within {} where it would stop): cut short",
            t.max_end_gap
        ));
    }
    GreedyMarginCheck {
        holds: reasons.is_empty(),
        tokens: answer_len,
        departures,
        max_gap,
        total_gap,
        end_gap: gaps.end_gap,
        resplits,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_never_negative_and_nan_is_infinite() {
        assert_eq!(gap(3.0, 1.0), 2.0);
        assert_eq!(gap(3.0, 3.0), 0.0);
        assert_eq!(gap(3.0, f32::NAN), f32::INFINITY);
        assert_eq!(gap(3.0, f32::NEG_INFINITY), f32::INFINITY);
        assert_eq!(best(&[1.0, f32::NAN, 4.0, 4.0]), (Some(2), 4.0));
        assert_eq!(best(&[f32::NAN]).0, None);
    }

    #[test]
    fn the_verdict_names_each_bar() {
        let t = GreedyThresholds { max_token_gap: 1.0, max_total_gap: 1.5, max_end_gap: 1.0 };
        let gaps = Gaps { positions: vec![(0.0, Some(1)), (0.8, Some(2)), (0.9, Some(3))], end_gap: Some(0.2) };
        let v = verdict(&[1, 2, 3], &gaps, 0, 10, &t);
        assert!(!v.holds);
        assert_eq!(v.reasons.len(), 1, "{:?}", v.reasons);
        assert_eq!(v.departures, 2);
        assert_eq!(v.max_gap, Some((2, 0.9)));
        let cut = Gaps { positions: vec![(0.0, Some(1))], end_gap: Some(7.0) };
        let v = verdict(&[1], &cut, 0, 10, &t);
        assert!(!v.holds && v.reasons[0].contains("cut short"), "{:?}", v.reasons);
        let ok = Gaps { positions: vec![(0.0, Some(1)), (0.3, Some(2))], end_gap: None };
        assert!(verdict(&[1, 2], &ok, 0, 2, &t).holds);
    }
}
