//! Weighted token ids, and their cut into the 77-token chunks the text encoders read.
//!
//! Transcribes the reference pipelines' token handling: SD 1.5's `get_prompts_with_weights`,
//! `pad_tokens_and_weights` and the chunk loop of `get_unweighted_text_embeddings` (with the
//! pipeline's defaults `max_embeddings_multiples=3`, `no_boseos_middle=False`), SDXL's
//! `get_prompts_tokens_with_weights`, its padding of prompt against negative prompt and
//! `group_tokens_and_weights`. Weights stay f64 (Python floats); the re-weighting step casts them
//! as the reference does.

use super::super::clip_tokenizer::{
    CLIP_BOS_TOKEN_ID, CLIP_CONTEXT_LENGTH, CLIP_EOS_TOKEN_ID, ClipTokenizer,
};
use super::{PromptError, PromptFlavor, parse_prompt_attention};

/// Content tokens a chunk holds besides its BOS and EOS.
const CHUNK_BODY: usize = CLIP_CONTEXT_LENGTH - 2;

/// The SD 1.5 pipeline's default (and the miner's) limit: prompts up to 3 × 75 tokens.
pub const SD15_MAX_EMBEDDINGS_MULTIPLES: usize = 3;

/// A prompt's token ids with one weight each, no BOS or EOS.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WeightedTokens {
    /// Token ids.
    pub ids: Vec<u32>,
    /// The weight of each id.
    pub weights: Vec<f64>,
}

/// What the SD 1.5 text encoder reads for one prompt: chunks of 77 ids, each `BOS … EOS`.
///
/// The encoder runs on each chunk; its outputs, concatenated in order (`77 × chunks` rows), are
/// what [`super::apply_weights_sd15`] weights with the concatenated `weights`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunks {
    /// Token ids of each chunk.
    pub ids: Vec<Vec<u32>>,
    /// The weight of each position of each chunk (1.0 at BOS, EOS and padding).
    pub weights: Vec<Vec<f64>>,
}

impl PromptChunks {
    /// The weights of all chunks in order, aligned with the concatenated encoder output.
    pub fn flat_weights(&self) -> Vec<f64> {
        self.weights.concat()
    }
}

/// What SDXL's two text encoders read for one prompt.
///
/// Chunk `i` of `ids` goes to the first encoder, chunk `i` of `ids_2` to the second; their
/// penultimate hidden states, concatenated along the hidden axis, are weighted per chunk by
/// [`super::apply_weights_sdxl`] with `weights[i]`, and the chunks are then concatenated.
/// Every chunk holds 77 ids but the last, which holds what is left.
#[derive(Debug, Clone, PartialEq)]
pub struct SdxlPromptChunks {
    /// Token ids of each chunk, first tokenizer.
    pub ids: Vec<Vec<u32>>,
    /// Token ids of each chunk, second tokenizer (differs where the prompt has a "!").
    pub ids_2: Vec<Vec<u32>>,
    /// The weight of each position of each chunk, from the first tokenizer.
    pub weights: Vec<Vec<f64>>,
}

/// The prompt's ids and weights: each `(text, weight)` run of [`parse_prompt_attention`]
/// tokenized alone, its weight copied to its tokens. No truncation (SDXL's
/// `get_prompts_tokens_with_weights`).
pub fn weighted_tokens(
    tokenizer: &ClipTokenizer,
    text: &str,
    flavor: PromptFlavor,
) -> Result<WeightedTokens, PromptError> {
    weighted_tokens_up_to(tokenizer, text, flavor, usize::MAX)
}

/// [`weighted_tokens`] that stops after the run that takes it past `limit` tokens and keeps the
/// first `limit` (SD 1.5's `get_prompts_with_weights`).
fn weighted_tokens_up_to(
    tokenizer: &ClipTokenizer,
    text: &str,
    flavor: PromptFlavor,
    limit: usize,
) -> Result<WeightedTokens, PromptError> {
    let mut out = WeightedTokens::default();
    for run in parse_prompt_attention(text, flavor)? {
        let ids = tokenizer.encode(&run.text)?;
        out.weights
            .extend(std::iter::repeat_n(run.weight, ids.len()));
        out.ids.extend(ids);
        if out.ids.len() > limit {
            break;
        }
    }
    out.ids.truncate(limit);
    out.weights.truncate(limit);
    Ok(out)
}

/// The SD 1.5 pipeline's chunks for a prompt and (with classifier-free guidance) its negative
/// prompt: both get the same number of chunks, enough for the longer one, at most
/// `max_embeddings_multiples` ([`SD15_MAX_EMBEDDINGS_MULTIPLES`] in the reference); tokens past
/// `75 × max_embeddings_multiples` are dropped, as there.
pub fn sd15_prompt_chunks(
    tokenizer: &ClipTokenizer,
    prompt: &str,
    negative: Option<&str>,
    max_embeddings_multiples: usize,
) -> Result<(PromptChunks, Option<PromptChunks>), PromptError> {
    if max_embeddings_multiples == 0 {
        return Err(PromptError::ZeroEmbeddingsMultiples);
    }
    let limit = CHUNK_BODY * max_embeddings_multiples;
    let prompt = weighted_tokens_up_to(tokenizer, prompt, PromptFlavor::Sd15, limit)?;
    let negative = negative
        .map(|n| weighted_tokens_up_to(tokenizer, n, PromptFlavor::Sd15, limit))
        .transpose()?;
    let longest = prompt
        .ids
        .len()
        .max(negative.as_ref().map_or(0, |n| n.ids.len()));
    // `(longest - 1) // 75 + 1` in Python, which is 0 for an empty prompt; then at least 1.
    let chunks = if longest == 0 {
        1
    } else {
        ((longest - 1) / CHUNK_BODY + 1).min(max_embeddings_multiples)
    };
    let pad = tokenizer.pad_token().id();
    Ok((
        sd15_chunk(&prompt, chunks, pad),
        negative.map(|n| sd15_chunk(&n, chunks, pad)),
    ))
}

/// `pad_tokens_and_weights` then the chunk loop of `get_unweighted_text_embeddings`.
fn sd15_chunk(tokens: &WeightedTokens, chunks: usize, pad: u32) -> PromptChunks {
    let max_length = CHUNK_BODY * chunks + 2;
    let mut padded = Vec::with_capacity(max_length);
    padded.push(CLIP_BOS_TOKEN_ID);
    padded.extend_from_slice(&tokens.ids);
    padded.resize(max_length - 1, pad);
    padded.push(CLIP_EOS_TOKEN_ID);
    let ids = if chunks == 1 {
        vec![padded]
    } else {
        (0..chunks)
            .map(|i| {
                let mut chunk =
                    padded[i * CHUNK_BODY..i * CHUNK_BODY + CLIP_CONTEXT_LENGTH].to_vec();
                chunk[0] = CLIP_BOS_TOKEN_ID;
                chunk[CLIP_CONTEXT_LENGTH - 1] = CLIP_EOS_TOKEN_ID;
                chunk
            })
            .collect()
    };

    // The reference appends 1.0, the chunk's slice of the weights, 1.0, per chunk, then pads the
    // whole with 1.0: a short last slice shifts what follows, but only padding (weight 1.0)
    // follows it, so every weight lands on its token.
    let weights_length = chunks * CLIP_CONTEXT_LENGTH;
    let mut flat = Vec::with_capacity(weights_length);
    if !tokens.weights.is_empty() {
        for j in 0..chunks {
            let start = (j * CHUNK_BODY).min(tokens.weights.len());
            let end = ((j + 1) * CHUNK_BODY).min(tokens.weights.len());
            flat.push(1.0);
            flat.extend_from_slice(&tokens.weights[start..end]);
            flat.push(1.0);
        }
    }
    flat.resize(weights_length, 1.0);
    let weights = flat
        .chunks(CLIP_CONTEXT_LENGTH)
        .map(<[f64]>::to_vec)
        .collect();
    PromptChunks { ids, weights }
}

/// The SDXL pipeline's chunks for a prompt and its negative prompt (always both: the reference
/// encodes `""` when there is none). `tokenizer` is SDXL's first ([`ClipTokenizer::new`]),
/// `tokenizer_2` its second ([`ClipTokenizer::sdxl_second`]).
pub fn sdxl_prompt_chunks(
    tokenizer: &ClipTokenizer,
    tokenizer_2: &ClipTokenizer,
    prompt: &str,
    negative: &str,
) -> Result<(SdxlPromptChunks, SdxlPromptChunks), PromptError> {
    let mut prompt_1 = weighted_tokens(tokenizer, prompt, PromptFlavor::Sdxl)?;
    let mut negative_1 = weighted_tokens(tokenizer, negative, PromptFlavor::Sdxl)?;
    let mut prompt_2 = weighted_tokens(tokenizer_2, prompt, PromptFlavor::Sdxl)?;
    let mut negative_2 = weighted_tokens(tokenizer_2, negative, PromptFlavor::Sdxl)?;
    pad_to_same_length(&mut prompt_1, &mut negative_1);
    pad_to_same_length(&mut prompt_2, &mut negative_2);

    let groups = |t: &WeightedTokens| group(&t.ids, &t.weights);
    let (prompt_ids, prompt_weights) = groups(&prompt_1);
    let (negative_ids, negative_weights) = groups(&negative_1);
    let (prompt_ids_2, _) = groups(&prompt_2);
    let (negative_ids_2, _) = groups(&negative_2);
    if prompt_ids.is_empty() {
        return Err(PromptError::EmptySdxlPrompt);
    }
    // The reference loops over the first tokenizer's chunks and indexes the second's with the
    // same number; surplus chunks of the second are never read.
    let take_matching =
        |ids_2: Vec<Vec<u32>>, ids: &[Vec<u32>]| -> Result<Vec<Vec<u32>>, PromptError> {
            let mut ids_2 = ids_2.into_iter();
            ids.iter()
                .enumerate()
                .map(|(chunk, first)| match ids_2.next() {
                    Some(second) if second.len() == first.len() => Ok(second),
                    second => Err(PromptError::SdxlTokenizersDisagree {
                        chunk,
                        first: first.len(),
                        second: second.map(|s| s.len()),
                    }),
                })
                .collect()
        };
    let prompt_ids_2 = take_matching(prompt_ids_2, &prompt_ids)?;
    let negative_ids_2 = take_matching(negative_ids_2, &negative_ids)?;
    Ok((
        SdxlPromptChunks {
            ids: prompt_ids,
            ids_2: prompt_ids_2,
            weights: prompt_weights,
        },
        SdxlPromptChunks {
            ids: negative_ids,
            ids_2: negative_ids_2,
            weights: negative_weights,
        },
    ))
}

/// Pads the shorter of the two with `<|endoftext|>` (weight 1.0) to the longer's length.
fn pad_to_same_length(a: &mut WeightedTokens, b: &mut WeightedTokens) {
    let len = a.ids.len().max(b.ids.len());
    for t in [a, b] {
        t.ids.resize(len, CLIP_EOS_TOKEN_ID);
        t.weights.resize(len, 1.0);
    }
}

/// `group_tokens_and_weights` with `pad_last_block=False`.
fn group(ids: &[u32], weights: &[f64]) -> (Vec<Vec<u32>>, Vec<Vec<f64>>) {
    ids.chunks(CHUNK_BODY)
        .zip(weights.chunks(CHUNK_BODY))
        .map(|(ids, weights)| {
            let mut chunk_ids = Vec::with_capacity(ids.len() + 2);
            chunk_ids.push(CLIP_BOS_TOKEN_ID);
            chunk_ids.extend_from_slice(ids);
            chunk_ids.push(CLIP_EOS_TOKEN_ID);
            let mut chunk_weights = Vec::with_capacity(weights.len() + 2);
            chunk_weights.push(1.0);
            chunk_weights.extend_from_slice(weights);
            chunk_weights.push(1.0);
            (chunk_ids, chunk_weights)
        })
        .unzip()
}
