//! The UNet's spatial transformer (diffusers' `Transformer2DModel`): group norm, projection in,
//! transformer blocks of self-attention, cross-attention to the text and a GEGLU feed-forward,
//! projection out, residual.
//!
//! Written here rather than taken from candle-transformers because candle's GEGLU uses the tanh
//! approximation of GELU where diffusers uses the exact (erf) one; over SDXL's ten-block
//! transformers that alone moves the UNet's output by about 1e-4 relative, the whole budget this
//! crate keeps against diffusers. Names are diffusers'.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::conv::Conv2d;
use super::group_norm::GroupNorm;

/// Multi-head attention with diffusers' projections (`to_q`, `to_k`, `to_v` without bias,
/// `to_out.0` with).
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder<'_>, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let head = dim / heads;
        Ok(Self {
            q: candle_nn::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            k: candle_nn::linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            v: candle_nn::linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            out: candle_nn::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
            scale: (head as f64).powf(-0.5),
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, n, dim) = xs.dims3()?;
        let split = |t: Tensor| {
            let len = t.dim(1)?;
            t.reshape((b, len, self.heads, dim / self.heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(xs)?)?;
        let k = split(self.k.forward(context)?)?;
        let v = split(self.v.forward(context)?)?;
        let attn = if q.device().is_cpu() && q.dtype() == DType::F32 {
            // The fused kernel (see `sdpa`): 2.3x faster at SD 1.5's 4096 tokens on 2 cores,
            // and without the 1 GiB of scores.
            let heads = |t: Tensor| {
                let (_, h, len, d) = t.dims4()?;
                t.reshape((b * h, len, d))
            };
            let out =
                super::sdpa::attention(&heads(q)?, &heads(k)?, &heads(v)?, self.scale as f32)?;
            out.reshape((b, self.heads, n, dim / self.heads))?
        } else {
            let scores = (q.matmul(&k.t()?)? * self.scale)?;
            candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?
        };
        let attn = attn.transpose(1, 2)?.reshape((b, n, dim))?;
        self.out.forward(&attn)
    }
}

/// One transformer block.
struct Block {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl Block {
    fn new(vb: VarBuilder<'_>, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: candle_nn::linear(dim, inner * 2, vb.pp("ff.net.0.proj"))?,
            ff_out: candle_nn::linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = self.norm1.forward(xs)?;
        let xs = (self.attn1.forward(&x, &x)? + xs)?;
        let xs = (self.attn2.forward(&self.norm2.forward(&xs)?, context)? + xs)?;
        // GEGLU: the first half gated by the exact GELU of the second.
        let h = self.ff_in.forward(&self.norm3.forward(&xs)?)?;
        let halves = h.chunk(2, D::Minus1)?;
        let h = (&halves[0] * halves[1].gelu_erf()?)?;
        self.ff_out.forward(&h)? + xs
    }
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// The spatial transformer of one UNet attention slot.
pub(crate) struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<Block>,
    proj_out: Projection,
}

impl SpatialTransformer {
    /// `depth` blocks of `heads` heads over `channels`, attending to `context_dim`-wide text.
    pub(crate) fn new(
        vb: VarBuilder<'_>,
        channels: usize,
        heads: usize,
        depth: usize,
        context_dim: usize,
        linear: bool,
        groups: usize,
    ) -> Result<Self> {
        let projection = |name| -> Result<Projection> {
            Ok(if linear {
                Projection::Linear(candle_nn::linear(channels, channels, vb.pp(name))?)
            } else {
                Projection::Conv(Conv2d::new(
                    channels,
                    channels,
                    1,
                    Default::default(),
                    vb.pp(name),
                )?)
            })
        };
        let blocks = (0..depth)
            .map(|i| {
                Block::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    channels,
                    context_dim,
                    heads,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: projection("proj_in")?,
            blocks,
            proj_out: projection("proj_out")?,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let x = self.norm.forward(xs)?;
        // (b, c, h, w) <-> (b, h * w, c), projecting on whichever side the layout wants.
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut x = match &self.proj_in {
            Projection::Conv(p) => to_tokens(&p.forward(&x)?)?,
            Projection::Linear(p) => p.forward(&to_tokens(&x)?)?,
        };
        for block in &self.blocks {
            x = block.forward(&x, context)?;
        }
        let to_map = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let x = match &self.proj_out {
            Projection::Conv(p) => p.forward(&to_map(&x)?.contiguous()?)?,
            Projection::Linear(p) => to_map(&p.forward(&x)?)?,
        };
        x + xs
    }
}
