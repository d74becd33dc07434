//! Prompt weighting and long prompts, as the reference miner's long-prompt-weighting pipelines
//! do them, so that a weighted or long prompt conditions the UNet as it does there.
//!
//! The reference SD miner (heurist-network/miner-release) runs diffusers' community pipelines,
//! vendored as `vendor/lpw_stable_diffusion.py` (SD 1.5) and `vendor/lpw_stable_diffusion_xl.py`
//! (SDXL). They agree on the syntax and differ in everything after it, so each step here takes
//! a [`PromptFlavor`]:
//! 1. [`parse_prompt_attention`]: A1111 syntax to `(text, weight)` runs (`attention.rs`);
//! 2. each run is tokenized alone ([`ClipTokenizer::encode`](super::clip_tokenizer::ClipTokenizer::encode)) and its weight copied to its
//!    tokens; the ids are cut into the 77-token chunks the text encoder reads, BOS and EOS
//!    around each, with one weight per position (`chunks.rs`):
//!    - SD 1.5 ([`sd15_prompt_chunks`]): at most `max_embeddings_multiples` (3) chunks, longer
//!      prompts truncated; prompt and negative prompt get the same number of chunks, all 77 long,
//!      padded with `<|endoftext|>`;
//!    - SDXL ([`sdxl_prompt_chunks`]): no limit; the shorter of prompt and negative is padded with
//!      `<|endoftext|>` to the longer's length, then cut into 75-token pieces, the last one
//!      shorter; each of SDXL's two tokenizers makes its own ids, the first one's weights serve
//!      both;
//! 3. after the encoder, the weights are applied to the embeddings (`reweight.rs`):
//!    - SD 1.5 ([`apply_weights_sd15`]): multiply each position by its weight, then scale the
//!      whole back to the mean it had;
//!    - SDXL ([`apply_weights_sdxl`], per chunk): move each weighted position away from the
//!      chunk's last (EOS) position by its weight, rounded to f16.
//!
//! How a pipeline uses it:
//! - SD 1.5: run the encoder (last hidden state) on each of [`PromptChunks::ids`], concatenate
//!   the outputs along the tokens, then [`apply_weights_sd15`] with
//!   [`PromptChunks::flat_weights`]; the same for the negative prompt, which has as many chunks;
//! - SDXL: for chunk `i`, the first encoder on `ids[i]` and the second on `ids_2[i]` (penultimate
//!   hidden states both), concatenated along the hidden axis, then [`apply_weights_sdxl`] with
//!   `weights[i]`; the weighted chunks concatenated along the tokens. The pooled embedding is the
//!   second encoder's on the *last* chunk (the reference keeps the last loop iteration's), which
//!   transformers takes at the chunk's first `<|endoftext|>` (its `argmax` of the ids).
//!
//! Not here: running the text encoders, classifier-free guidance.
//!
//! ```
//! use heurist_inference::image::clip_tokenizer::ClipTokenizer;
//! use heurist_inference::image::prompt::sd15_prompt_chunks;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tokenizer = ClipTokenizer::new()?;
//! let (prompt, negative) = sd15_prompt_chunks(&tokenizer, "a (red:1.5) cat", Some("blurry"), 3)?;
//! assert_eq!(prompt.ids.len(), 1);
//! assert_eq!(&prompt.ids[0][..6], [49406, 320, 736, 2368, 49407, 49407]);
//! assert_eq!(&prompt.weights[0][..5], [1.0, 1.0, 1.5, 1.0, 1.0]);
//! assert!(negative.is_some());
//! # Ok(())
//! # }
//! ```

mod attention;
mod chunks;
mod reweight;

pub use attention::{WeightedText, parse_prompt_attention};
pub use chunks::{
    PromptChunks, SD15_MAX_EMBEDDINGS_MULTIPLES, SdxlPromptChunks, WeightedTokens,
    sd15_prompt_chunks, sdxl_prompt_chunks, weighted_tokens,
};
pub use reweight::{apply_weights_sd15, apply_weights_sdxl};

use super::clip_tokenizer::ClipTokenizerError;

/// Which reference pipeline's rules to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFlavor {
    /// `lpw_stable_diffusion.py`: SD 1.5 checkpoints.
    Sd15,
    /// `lpw_stable_diffusion_xl.py`: SDXL checkpoints (adds `BREAK`).
    Sdxl,
}

/// What can go wrong turning a prompt into weighted chunks or applying the weights.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// A `(text:w)` group whose `w` is not a number (the reference's `float()` raises too).
    #[error(
        "prompt weight {weight:?} is not a number (in prompt {prompt:?}); write e.g. (word:1.2)"
    )]
    InvalidWeight {
        /// The weight as written.
        weight: String,
        /// The whole prompt.
        prompt: String,
    },

    /// Tokenizing a piece of the prompt failed.
    #[error(transparent)]
    Tokenizer(#[from] ClipTokenizerError),

    /// `max_embeddings_multiples` of 0: no chunk could hold the prompt.
    #[error("max_embeddings_multiples is 0; expected at least 1 (the reference uses 3)")]
    ZeroEmbeddingsMultiples,

    /// SDXL with a prompt and a negative prompt that both have no tokens: the reference pipeline
    /// fails here too (it concatenates an empty list of chunk embeddings).
    #[error("SDXL prompt and negative prompt are both empty; give at least one of them some text")]
    EmptySdxlPrompt,

    /// SDXL's two tokenizers cut the prompt into chunks of different lengths (the second one
    /// splits every "!" into its own token), which the reference pipeline cannot encode either.
    #[error(
        "SDXL chunk {chunk}: the first tokenizer gives {first} tokens, the second {second:?}; the \
         reference pipeline fails on this prompt too (runs of \"!\" are the usual cause)"
    )]
    SdxlTokenizersDisagree {
        /// The 0-based chunk.
        chunk: usize,
        /// Its length from the first tokenizer.
        first: usize,
        /// Its length from the second, `None` when the second has fewer chunks.
        second: Option<usize>,
    },

    /// The embeddings do not have the shape the weights need.
    #[error(
        "embeddings of shape {shape:?} for {weights} weights; expected [{weights}, hidden] or \
         [batch, {weights}, hidden]"
    )]
    EmbeddingShape {
        /// The embeddings' shape.
        shape: Vec<usize>,
        /// The number of weights.
        weights: usize,
    },

    /// A tensor operation failed while applying the weights.
    #[error("applying prompt weights: {source}")]
    Tensor {
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
}

impl From<candle_core::Error> for PromptError {
    fn from(source: candle_core::Error) -> Self {
        Self::Tensor { source }
    }
}
