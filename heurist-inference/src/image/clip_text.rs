//! The CLIP text encoder as Stable Diffusion uses it, in transformers' tensor names.
//!
//! Written here rather than taken from candle-transformers because SD needs what neither of
//! candle's two CLIP text models gives with a configurable size: SDXL conditions on the
//! *penultimate* layer's hidden states (before the final layer norm) of both its encoders, and on
//! the second encoder's pooled, projected embedding; OpenCLIP ViT-bigG uses exact (erf) GELU.
//! SD 1.5 uses the last hidden state after the final layer norm.
//!
//! The layers: token plus position embeddings, pre-norm blocks of causal self-attention and an
//! MLP, a final layer norm; the pooled embedding is the final-normed state at the first end
//! token (transformers' rule when `eos_token_id` is 49407), times `text_projection` (no bias).

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::engine::CLIP_END_TOKEN;

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)`: OpenAI's CLIP ViT-L/14 (SD 1.5, SDXL's first encoder).
    QuickGelu,
    /// Exact GELU: OpenCLIP ViT-bigG/14 (SDXL's second encoder).
    Gelu,
}

/// One text encoder's shape, as read from its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipDims {
    /// Vocabulary size.
    pub vocab: usize,
    /// Positions (77).
    pub positions: usize,
    /// Width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads (a convention: head size 64, at least one head).
    pub heads: usize,
    /// Width of the pooled projection, when the encoder has one.
    pub projection: Option<usize>,
    /// The MLP's activation (a convention of the encoder's family).
    pub activation: ClipActivation,
}

struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// What one forward gives.
pub(crate) struct ClipOutput {
    /// The last layer's states after the final layer norm `(batch, positions, hidden)`.
    pub(crate) last: Tensor,
    /// The second-to-last layer's states, not normed.
    pub(crate) penultimate: Tensor,
    /// The projected pooled embedding `(batch, projection)`, when the encoder has a projection.
    pub(crate) pooled: Option<Tensor>,
}

/// A CLIP text transformer.
pub(crate) struct ClipTextEncoder {
    dims: ClipDims,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    projection: Option<Tensor>,
}

impl ClipTextEncoder {
    /// Builds the encoder from `vb` in transformers' names (`text_model.…`, `text_projection`).
    pub(crate) fn new(vb: VarBuilder<'_>, dims: &ClipDims) -> Result<Self> {
        let h = dims.hidden;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let token_embedding = candle_nn::embedding(dims.vocab, h, emb.pp("token_embedding"))?;
        let position_embedding = emb.get((dims.positions, h), "position_embedding.weight")?;
        let enc = tm.pp("encoder.layers");
        let layers = (0..dims.layers)
            .map(|i| {
                let l = enc.pp(i.to_string());
                let a = l.pp("self_attn");
                Ok(Layer {
                    norm1: candle_nn::layer_norm(h, 1e-5, l.pp("layer_norm1"))?,
                    q: candle_nn::linear(h, h, a.pp("q_proj"))?,
                    k: candle_nn::linear(h, h, a.pp("k_proj"))?,
                    v: candle_nn::linear(h, h, a.pp("v_proj"))?,
                    out: candle_nn::linear(h, h, a.pp("out_proj"))?,
                    norm2: candle_nn::layer_norm(h, 1e-5, l.pp("layer_norm2"))?,
                    fc1: candle_nn::linear(h, dims.intermediate, l.pp("mlp.fc1"))?,
                    fc2: candle_nn::linear(dims.intermediate, h, l.pp("mlp.fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = candle_nn::layer_norm(h, 1e-5, tm.pp("final_layer_norm"))?;
        let projection = match dims.projection {
            Some(p) => Some(vb.get((p, h), "text_projection.weight")?),
            None => None,
        };
        Ok(Self {
            dims: dims.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            projection,
        })
    }

    /// Encodes `(batch, positions)` u32 ids.
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<ClipOutput> {
        let (batch, seq) = ids.dims2()?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.i(..seq)?)?;
        let mask = causal_mask(seq, xs.device())?.to_dtype(xs.dtype())?;
        let heads = self.dims.heads;
        let head_dim = self.dims.hidden / heads;
        let scale = (head_dim as f64).powf(-0.5);
        let mut penultimate = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = &xs;
            let x = layer.norm1.forward(&xs)?;
            let split = |t: Tensor| {
                t.reshape((batch, seq, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split((layer.q.forward(&x)? * scale)?)?;
            let k = split(layer.k.forward(&x)?)?;
            let v = split(layer.v.forward(&x)?)?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let attn =
                probs
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((batch, seq, self.dims.hidden))?;
            xs = (layer.out.forward(&attn)? + residual)?;
            let residual = &xs;
            let x = layer.fc1.forward(&layer.norm2.forward(&xs)?)?;
            let x = match self.dims.activation {
                ClipActivation::QuickGelu => (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?,
                ClipActivation::Gelu => x.gelu_erf()?,
            };
            xs = (layer.fc2.forward(&x)? + residual)?;
            if i + 2 == self.layers.len() {
                penultimate = xs.clone();
            }
        }
        if self.layers.len() < 2 {
            penultimate = xs.clone();
        }
        let last = self.final_norm.forward(&xs)?;
        let pooled = match &self.projection {
            None => None,
            Some(projection) => {
                let ids = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
                let rows = ids
                    .iter()
                    .enumerate()
                    .map(|(b, row)| {
                        // The first end token; a row without one pools its last position.
                        let at = row
                            .iter()
                            .position(|&t| t == CLIP_END_TOKEN)
                            .unwrap_or(seq - 1);
                        last.i((b, at))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(Tensor::stack(&rows, 0)?.matmul(&projection.t()?)?)
            }
        };
        Ok(ClipOutput {
            last,
            penultimate,
            pooled,
        })
    }
}

/// 0 on and below the diagonal, the lowest f32 above it (a query never sees later tokens).
fn causal_mask(seq: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)
}
