//! The Llama-family decoder on candle tensors, for Hugging Face safetensors checkpoints:
//! Llama 2 / 3 (with Llama 3.1's `llama3` RoPE scaling), Mistral (sliding-window attention)
//! and Mixtral (sparse mixture-of-experts MLPs), written after transformers 4.44's
//! `modeling_llama.py`, `modeling_mistral.py` and `modeling_mixtral.py` (eager attention).
//!
//! candle-transformers has bodies for all three, but they hide their layers (no hidden states
//! for the observer) and apply Mistral's window only inside one forward pass, so decoding past
//! the window would attend to positions transformers masks. This file does what they lack and
//! nothing else: one block type, the three MLP kinds, a KV cache per layer.
//!
//! Numerics follow transformers where it matters for matching it: RoPE angles in f32, the
//! attention softmax in f32 whatever the checkpoint dtype, Mixtral's router softmax in f32 and
//! its top-k weights renormalised, everything else in the checkpoint's dtype. The window:
//! query position `i` attends to key positions `j` with `i - window < j <= i`, as transformers'
//! sliding-window mask has it.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};

/// Llama 3.1's RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Llama3Rope {
    pub(crate) factor: f32,
    pub(crate) low_freq_factor: f32,
    pub(crate) high_freq_factor: f32,
    pub(crate) original_max_position_embeddings: usize,
}

/// The runtime config, made from a checked `config.json` by `HfConfig::decoder`.
#[derive(Debug, Clone)]
pub(crate) struct DecoderConfig {
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) vocab_size: usize,
    pub(crate) num_layers: usize,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) rms_norm_eps: f64,
    pub(crate) rope_theta: f64,
    pub(crate) rope_scaling: Option<Llama3Rope>,
    /// Positions the RoPE tables cover.
    pub(crate) max_positions: usize,
    pub(crate) tie_word_embeddings: bool,
    /// Keys a query may attend to, itself included (Mistral, Mixtral); `None`: all before it.
    pub(crate) sliding_window: Option<usize>,
    /// `(num_local_experts, num_experts_per_tok)` for Mixtral.
    pub(crate) experts: Option<(usize, usize)>,
}

/// The RoPE angles of every position, `[max_positions, head_dim / 2]`, in f32.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &DecoderConfig, device: &Device) -> Result<Self> {
        let inv_freq = inv_freq(cfg);
        let half = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, cfg.max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_positions, 1))?;
        let freqs = positions.matmul(&inv_freq)?;
        Ok(Self { cos: freqs.cos()?, sin: freqs.sin()? })
    }

    /// Rotates `x` (`[1, heads, seq, head_dim]`) for positions `position..position + seq`.
    fn apply(&self, x: &Tensor, position: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, position, seq)?.to_dtype(x.dtype())?;
        let sin = self.sin.narrow(0, position, seq)?.to_dtype(x.dtype())?;
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }
}

/// transformers' `inv_freq`, in f32 as it computes it, with the `llama3` adjustment
/// (`_compute_llama3_parameters`) when configured.
fn inv_freq(cfg: &DecoderConfig) -> Vec<f32> {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta as f32;
    let plain = (0..dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / dim as f32));
    let Some(s) = cfg.rope_scaling else { return plain.collect() };
    let old = s.original_max_position_embeddings as f32;
    let (low_wavelen, high_wavelen) = (old / s.low_freq_factor, old / s.high_freq_factor);
    plain
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / s.factor
            } else {
                let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &DecoderConfig) -> Result<Self> {
        let (h, q, kv) = (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        Ok(Self {
            q: candle_nn::linear_no_bias(h, q, vb.pp("q_proj"))?,
            k: candle_nn::linear_no_bias(h, kv, vb.pp("k_proj"))?,
            v: candle_nn::linear_no_bias(h, kv, vb.pp("v_proj"))?,
            o: candle_nn::linear_no_bias(q, h, vb.pp("o_proj"))?,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// `x`: `[1, seq, hidden]` at positions `position..`; `cache` holds the keys and values of
    /// the positions before (cut to `position` first).
    fn forward(
        &self,
        x: &Tensor,
        position: usize,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, seq, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| t.reshape((b, seq, heads, self.head_dim))?.transpose(1, 2);
        let q = rope.apply(&split(self.q.forward(x)?, self.heads)?, position)?;
        let k = rope.apply(&split(self.k.forward(x)?, self.kv_heads)?, position)?;
        let v = split(self.v.forward(x)?, self.kv_heads)?.contiguous()?;
        let (k, v) = match cache.take() {
            Some((ck, cv)) if position > 0 => {
                let (ck, cv) = (ck.narrow(2, 0, position)?, cv.narrow(2, 0, position)?);
                (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?)
            }
            _ => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let n_rep = self.heads / self.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, n_rep)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, n_rep)?.contiguous()?;

        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, seq, self.heads * self.head_dim))?;
        self.o.forward(&out)
    }
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &DecoderConfig, names: [&str; 3]) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: candle_nn::linear_no_bias(h, i, vb.pp(names[0]))?,
            up: candle_nn::linear_no_bias(h, i, vb.pp(names[1]))?,
            down: candle_nn::linear_no_bias(i, h, vb.pp(names[2]))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (self.gate.forward(x)?.silu()? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

/// Mixtral's sparse MoE block: each token goes to its `per_token` highest-scoring experts,
/// their outputs summed with the router's softmax weights renormalised over those experts.
#[derive(Debug, Clone)]
struct Moe {
    router: Linear,
    experts: Vec<Mlp>,
    per_token: usize,
}

impl Moe {
    fn load(vb: VarBuilder, cfg: &DecoderConfig, experts: usize, per_token: usize) -> Result<Self> {
        let router = candle_nn::linear_no_bias(cfg.hidden_size, experts, vb.pp("gate"))?;
        let experts = (0..experts)
            .map(|e| Mlp::load(vb.pp("experts").pp(e), cfg, ["w1", "w3", "w2"]))
            .collect::<Result<_>>()?;
        Ok(Self { router, experts, per_token })
    }
}

impl Module for Moe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, seq, hidden) = x.dims3()?;
        let xs = x.reshape((b * seq, hidden))?;
        let router = self.router.forward(&xs)?.to_dtype(DType::F32)?;
        let probs: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(&router)?.to_vec2()?;
        // Per expert: the tokens routed to it and their weights, in token order.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (token, p) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..p.len()).collect();
            // torch.topk: the largest first; equal scores keep the lower index first.
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let top = &order[..self.per_token];
            let sum: f32 = top.iter().map(|&e| p[e]).sum();
            for &e in top {
                routed[e].0.push(token as u32);
                routed[e].1.push(p[e] / sum);
            }
        }
        let mut out = xs.zeros_like()?;
        for (expert, (tokens, weights)) in self.experts.iter().zip(routed) {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let tokens = Tensor::from_vec(tokens, n, x.device())?;
            let weights = Tensor::from_vec(weights, (n, 1), x.device())?.to_dtype(x.dtype())?;
            let y = expert.forward(&xs.index_select(&tokens, 0)?)?.broadcast_mul(&weights)?;
            out = out.index_add(&tokens, &y, 0)?;
        }
        out.reshape((b, seq, hidden))
    }
}

#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Sparse(Moe),
}

#[derive(Debug, Clone)]
struct Block {
    input_norm: RmsNorm,
    attention: Attention,
    post_norm: RmsNorm,
    ffn: FeedForward,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &DecoderConfig) -> Result<Self> {
        let ffn = match cfg.experts {
            None => FeedForward::Dense(Mlp::load(vb.pp("mlp"), cfg, ["gate_proj", "up_proj", "down_proj"])?),
            Some((experts, per_token)) => {
                FeedForward::Sparse(Moe::load(vb.pp("block_sparse_moe"), cfg, experts, per_token)?)
            }
        };
        Ok(Self {
            input_norm: candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            attention: Attention::load(vb.pp("self_attn"), cfg)?,
            post_norm: candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            ffn,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        position: usize,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let attended = self.attention.forward(&self.input_norm.forward(x)?, position, rope, mask, cache)?;
        let x = (x + attended)?;
        let normed = self.post_norm.forward(&x)?;
        let ffn = match &self.ffn {
            FeedForward::Dense(mlp) => mlp.forward(&normed)?,
            FeedForward::Sparse(moe) => moe.forward(&normed)?,
        };
        x + ffn
    }
}

/// The weights, shared by every clone.
#[derive(Debug)]
struct Weights {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    sliding_window: Option<usize>,
}

/// A Llama-family decoder with its KV cache; a clone shares the weights and starts empty.
#[derive(Debug)]
pub(crate) struct Decoder {
    weights: std::sync::Arc<Weights>,
    cache: Vec<Option<(Tensor, Tensor)>>,
    /// Positions the cache holds.
    cached: usize,
}

impl Clone for Decoder {
    fn clone(&self) -> Self {
        Self { weights: std::sync::Arc::clone(&self.weights), cache: vec![None; self.cache.len()], cached: 0 }
    }
}

impl Decoder {
    /// Loads the checkpoint's tensors (names as `save_pretrained` writes them).
    pub(crate) fn load(vb: VarBuilder, cfg: &DecoderConfig) -> Result<Self> {
        let model = vb.pp("model");
        let embed = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, model.pp("embed_tokens"))?;
        let blocks =
            (0..cfg.num_layers).map(|l| Block::load(model.pp("layers").pp(l), cfg)).collect::<Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, model.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        };
        let rope = Rope::new(cfg, vb.device())?;
        let weights = Weights { embed, blocks, norm, lm_head, rope, sliding_window: cfg.sliding_window };
        Ok(Self { weights: std::sync::Arc::new(weights), cache: vec![None; cfg.num_layers], cached: 0 })
    }

    /// Decoder layers.
    pub(crate) fn num_layers(&self) -> usize {
        self.weights.blocks.len()
    }

    /// Runs `tokens` at positions `position..` (the cache keeps the positions before) and
    /// returns the logits after the last one, `[vocab]` in f32; `hidden` receives the last
    /// token's hidden states at `layers` (see `llm::observer` for the numbering), one after
    /// another in the order asked, as f32.
    pub(crate) fn forward_last(
        &mut self,
        tokens: &[u32],
        position: usize,
        layers: &[usize],
        hidden: &mut Vec<f32>,
    ) -> Result<Vec<f32>> {
        let w = &*self.weights;
        if tokens.is_empty() {
            candle_core::bail!("no tokens to run");
        }
        if position > self.cached {
            candle_core::bail!("tokens start at position {position} but the cache holds {}", self.cached);
        }
        let end = position + tokens.len();
        let max = w.rope.cos.dim(0)?;
        if end > max {
            candle_core::bail!("positions up to {end} asked for, the RoPE tables cover {max}");
        }
        let device = w.rope.cos.device();
        let seq = tokens.len();
        hidden.clear();
        hidden.resize(layers.len() * w.embed.hidden_size(), 0.0);
        let mut x = w.embed.forward(&Tensor::new(tokens, device)?.unsqueeze(0)?)?;
        tap(hidden, layers, 0, &x)?;
        let mask = attention_mask(position, seq, w.sliding_window, device)?;
        let last = w.blocks.len();
        for (l, (block, cache)) in w.blocks.iter().zip(&mut self.cache).enumerate() {
            x = block.forward(&x, position, &w.rope, mask.as_ref(), cache)?;
            if l + 1 < last {
                tap(hidden, layers, l + 1, &x)?;
            }
        }
        self.cached = end;
        let x = w.norm.forward(&x.narrow(1, seq - 1, 1)?)?;
        tap(hidden, layers, last, &x)?;
        w.lm_head.forward(&x)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
    }
}

/// Copies the last row of `x` (`[1, seq, hidden]`) into `hidden` wherever `layers` names
/// `index`.
fn tap(hidden: &mut [f32], layers: &[usize], index: usize, x: &Tensor) -> Result<()> {
    if !layers.contains(&index) {
        return Ok(());
    }
    let seq = x.dim(1)?;
    let row: Vec<f32> = x.narrow(1, seq - 1, 1)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    for (j, _) in layers.iter().enumerate().filter(|&(_, &l)| l == index) {
        hidden[j * row.len()..(j + 1) * row.len()].copy_from_slice(&row);
    }
    Ok(())
}

/// The additive mask (`0` or `-inf`, `[seq, position + seq]`, f32) for queries at
/// `position..position + seq` over keys `0..position + seq`: causal, and within `window`
/// when there is one; `None` when it would mask nothing.
fn attention_mask(position: usize, seq: usize, window: Option<usize>, device: &Device) -> Result<Option<Tensor>> {
    let keys = position + seq;
    let masked = |i: usize, j: usize| j > position + i || window.is_some_and(|w| position + i >= j + w);
    let needed = seq > 1 || window.is_some_and(|w| keys > w);
    if !needed {
        return Ok(None);
    }
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..keys).map(move |j| (i, j)))
        .map(|(i, j)| if masked(i, j) { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    Tensor::from_vec(values, (seq, keys), device).map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn mask_is_causal_and_windowed() {
        let mask = |position, seq, window| {
            attention_mask(position, seq, window, &Device::Cpu)
                .unwrap()
                .map(|m| m.to_vec2::<f32>().unwrap().iter().map(|r| r.iter().map(|v| u8::from(v.is_finite())).collect()).collect::<Vec<Vec<u8>>>())
        };
        assert_eq!(mask(0, 1, None), None);
        assert_eq!(mask(5, 1, None), None);
        assert_eq!(mask(0, 3, None), Some(vec![vec![1, 0, 0], vec![1, 1, 0], vec![1, 1, 1]]));
        // Window 2: a query sees itself and the one before.
        assert_eq!(mask(0, 3, Some(2)), Some(vec![vec![1, 0, 0], vec![1, 1, 0], vec![0, 1, 1]]));
        assert_eq!(mask(3, 1, Some(2)), Some(vec![vec![0, 0, 1, 1]]));
        assert_eq!(mask(1, 1, Some(2)), None);
    }
}
