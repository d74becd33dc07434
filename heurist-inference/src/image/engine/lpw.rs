//! The engine's default prompt path: the real CLIP tokenizer and the reference pipelines' long
//! prompt weighting, run through this engine's text encoders.
//!
//! [`super::super::prompt`] turns text into weighted id chunks and knows how to weight an
//! encoder's output; this module runs the encoders on those chunks the way the reference's
//! `get_weighted_text_embeddings` (SD 1.5) and `get_weighted_text_embeddings_sdxl` (SDXL) do:
//! - SD 1.5: every 77-id chunk through CLIP ViT-L (last hidden state), the chunks side by side
//!   along the tokens (up to 3 × 77 positions), then the mean-preserving weights over the whole;
//!   prompt and negative prompt have as many chunks, so they batch for guidance;
//! - SDXL: chunk by chunk, both encoders' penultimate states side by side, each chunk weighted
//!   towards its own end token; the pooled embedding is the second encoder's on the *last* chunk.
//!   The negative prompt is padded to the prompt's length (or the other way round), so both have
//!   the same chunks, and it is encoded even without guidance, as the reference does.
//!
//! The two tokenizers are built once per process (decompressing and indexing the embedded
//! vocabulary takes a noticeable fraction of a second) and shared by every engine.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

use super::{ImageEngine, TextConditioning};
use crate::error::{InferenceError, Result};
use crate::image::clip_tokenizer::ClipTokenizer;
use crate::image::prompt::{
    SD15_MAX_EMBEDDINGS_MULTIPLES, apply_weights_sd15, apply_weights_sdxl, sd15_prompt_chunks,
    sdxl_prompt_chunks,
};

/// SD 1.5's tokenizer (SDXL's first) and SDXL's second, built on first use.
static TOKENIZERS: OnceLock<(ClipTokenizer, ClipTokenizer)> = OnceLock::new();

fn tokenizers() -> Result<&'static (ClipTokenizer, ClipTokenizer)> {
    if let Some(built) = TOKENIZERS.get() {
        return Ok(built);
    }
    let prompt_error = |e| InferenceError::Prompt(crate::image::prompt::PromptError::from(e));
    let built = (
        ClipTokenizer::new().map_err(prompt_error)?,
        ClipTokenizer::sdxl_second().map_err(prompt_error)?,
    );
    // Two threads may both build; the first stored wins and the other copy is dropped.
    Ok(TOKENIZERS.get_or_init(|| built))
}

fn forward_error(source: candle_core::Error) -> InferenceError {
    InferenceError::Forward {
        step: "text encoder (long prompt weighting)".into(),
        source,
    }
}

/// Chunks of ids of one length as a `(chunks, length)` tensor.
fn id_rows(engine: &ImageEngine, rows: &[&[u32]]) -> Result<Tensor> {
    let width = rows.first().map_or(0, |r| r.len());
    let vocab = engine.arch.clip.vocab;
    if let Some(&token_id) = rows
        .iter()
        .flat_map(|r| r.iter())
        .find(|&&id| id as usize >= vocab)
    {
        return Err(InferenceError::UnknownToken {
            token_id,
            vocab_size: vocab,
        });
    }
    let flat: Vec<u32> = rows.concat();
    Tensor::from_vec(flat, (rows.len(), width), &engine.device).map_err(|source| {
        InferenceError::Tensor {
            context: "prompt token ids".into(),
            source,
        }
    })
}

impl ImageEngine {
    /// The text conditioning of a prompt and, for classifier-free guidance, its negative
    /// prompt, as the reference miner's long-prompt-weighting pipelines compute it: A1111
    /// weights (`(word:1.2)`, `(word)`, `[word]`, `\(` escapes; SDXL also `BREAK`), prompts past
    /// 77 tokens in chunks (SD 1.5 up to 225 tokens, SDXL unlimited). The batch is
    /// `[negative, prompt]`, or `[prompt]` when `negative` is `None`. f32.
    ///
    /// # Errors
    /// [`InferenceError::Prompt`] for a prompt the reference cannot weight either (a weight
    /// that is not a number, SDXL prompts whose two tokenizations disagree, SDXL with both
    /// prompts empty); [`InferenceError::Forward`] when an encoder fails.
    pub fn encode_prompts(&self, prompt: &str, negative: Option<&str>) -> Result<TextConditioning> {
        let (tokenizer, tokenizer_2) = tokenizers()?;
        match &self.clip2 {
            None => self.encode_sd15(tokenizer, prompt, negative),
            Some(_) => self.encode_sdxl(tokenizer, tokenizer_2, prompt, negative),
        }
    }

    fn encode_sd15(
        &self,
        tokenizer: &ClipTokenizer,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<TextConditioning> {
        let (prompt, negative) =
            sd15_prompt_chunks(tokenizer, prompt, negative, SD15_MAX_EMBEDDINGS_MULTIPLES)?;
        let mut rows = Vec::with_capacity(2);
        for chunks in negative.iter().chain([&prompt]) {
            let ids: Vec<&[u32]> = chunks.ids.iter().map(Vec::as_slice).collect();
            let out = self
                .clip
                .forward(&id_rows(self, &ids)?)
                .map_err(forward_error)?;
            // (chunks, 77, hidden) -> (1, chunks * 77, hidden): the chunks along the tokens.
            let (n, len, hidden) = out.last.dims3().map_err(forward_error)?;
            let joined = out
                .last
                .reshape((1, n * len, hidden))
                .map_err(forward_error)?;
            rows.push(apply_weights_sd15(&joined, &chunks.flat_weights())?);
        }
        let context = Tensor::cat(&rows, 0)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(forward_error)?;
        Ok(TextConditioning {
            context,
            pooled: None,
        })
    }

    fn encode_sdxl(
        &self,
        tokenizer: &ClipTokenizer,
        tokenizer_2: &ClipTokenizer,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<TextConditioning> {
        let clip2 = self.clip2.as_ref().ok_or_else(|| InferenceError::Forward {
            step: "SDXL prompt encoding".into(),
            source: candle_core::Error::Msg("the model has no second text encoder".into()),
        })?;
        let (prompt, neg) =
            sdxl_prompt_chunks(tokenizer, tokenizer_2, prompt, negative.unwrap_or(""))?;
        // Row 0 the negative, row 1 the prompt: their chunks have equal lengths, so each chunk
        // of both runs as one batch.
        let mut chunks = Vec::with_capacity(prompt.ids.len());
        let mut pooled = None;
        for i in 0..prompt.ids.len() {
            let ids = id_rows(self, &[&neg.ids[i], &prompt.ids[i]])?;
            let ids_2 = id_rows(self, &[&neg.ids_2[i], &prompt.ids_2[i]])?;
            let out = self.clip.forward(&ids).map_err(forward_error)?;
            let out_2 = clip2.forward(&ids_2).map_err(forward_error)?;
            let both =
                Tensor::cat(&[&out.penultimate, &out_2.penultimate], 2).map_err(forward_error)?;
            let weighted = [(0, &neg.weights[i]), (1, &prompt.weights[i])]
                .into_iter()
                .map(|(row, weights)| {
                    let e = both.narrow(0, row, 1).map_err(forward_error)?;
                    Ok(apply_weights_sdxl(&e, weights)?)
                })
                .collect::<Result<Vec<_>>>()?;
            chunks.push(Tensor::cat(&weighted, 0).map_err(forward_error)?);
            // The reference keeps the last loop iteration's pooled embeddings.
            pooled = out_2.pooled;
        }
        let context = Tensor::cat(&chunks, 1).map_err(forward_error)?;
        let pooled = pooled.ok_or_else(|| InferenceError::Forward {
            step: "SDXL prompt encoding".into(),
            source: candle_core::Error::Msg(
                "the second text encoder has no text projection (pooled embedding)".into(),
            ),
        })?;
        // Without guidance only the prompt's row conditions the UNet.
        let keep = |t: Tensor| -> Result<Tensor> {
            let t = if negative.is_some() {
                t
            } else {
                t.narrow(0, 1, 1).map_err(forward_error)?
            };
            t.to_dtype(DType::F32).map_err(forward_error)
        };
        Ok(TextConditioning {
            context: keep(context)?,
            pooled: Some(keep(pooled)?),
        })
    }
}
