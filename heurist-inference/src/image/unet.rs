//! The conditional UNet of SD 1.5 and SDXL, assembled from candle-transformers' blocks.
//!
//! candle's own `UNet2DConditionModel` has no `add_embedding`: SDXL adds to the time embedding
//! an embedding of the pooled text projection and the six "time ids" (original size, crop
//! corner, target size), each id through the same sinusoidal projection as the timestep. So the
//! top level (time embedding, block order, skip connections) lives here, and the down, mid and
//! up blocks are candle's. Names are diffusers' (`add_embedding.linear_1`, …).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    CrossAttnDownBlock2D, CrossAttnDownBlock2DConfig, CrossAttnUpBlock2D, CrossAttnUpBlock2DConfig,
    DownBlock2D, DownBlock2DConfig, UNetMidBlock2DCrossAttn, UNetMidBlock2DCrossAttnConfig,
    UpBlock2D, UpBlock2DConfig,
};

use super::detect::SdArchitecture;

const NORM_EPS: f64 = 1e-5;

enum Down {
    Plain(DownBlock2D),
    Attention(CrossAttnDownBlock2D),
}

enum Up {
    Plain(UpBlock2D),
    Attention(CrossAttnUpBlock2D),
}

/// SDXL's added conditioning.
struct AddEmbedding {
    time_ids: Timesteps,
    embedding: TimestepEmbedding,
}

/// The UNet.
pub(crate) struct Unet {
    conv_in: candle_nn::Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add: Option<AddEmbedding>,
    down: Vec<Down>,
    mid: UNetMidBlock2DCrossAttn,
    up: Vec<Up>,
    norm_out: candle_nn::GroupNorm,
    conv_out: candle_nn::Conv2d,
    levels: usize,
}

impl Unet {
    /// Builds the UNet of `arch` from `vb` (diffusers names).
    pub(crate) fn new(vb: VarBuilder<'_>, arch: &SdArchitecture) -> Result<Self> {
        let channels = &arch.unet_channels;
        let levels = channels.len();
        let c0 = channels[0];
        let time_dim = c0 * 4;
        let groups = arch.norm_groups;
        let conv3 = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = candle_nn::conv2d(arch.latent_channels, c0, 3, conv3, vb.pp("conv_in"))?;
        let time_proj = Timesteps::new(c0, true, 0.0);
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), c0, time_dim)?;
        let add = match arch.add_embedding {
            None => None,
            Some(add) => Some(AddEmbedding {
                time_ids: Timesteps::new(add.time_id_dim, true, 0.0),
                embedding: TimestepEmbedding::new(
                    vb.pp("add_embedding"),
                    add.in_features,
                    time_dim,
                )?,
            }),
        };
        let down = (0..levels)
            .map(|i| {
                let in_ch = if i == 0 { c0 } else { channels[i - 1] };
                let plain = DownBlock2DConfig {
                    num_layers: arch.layers_per_block,
                    resnet_eps: NORM_EPS,
                    resnet_groups: groups,
                    add_downsample: i + 1 < levels,
                    downsample_padding: 1,
                    ..Default::default()
                };
                let vb = vb.pp(format!("down_blocks.{i}"));
                Ok(match arch.unet_attention[i] {
                    None => Down::Plain(DownBlock2D::new(
                        vb,
                        in_ch,
                        channels[i],
                        Some(time_dim),
                        plain,
                    )?),
                    Some(depth) => Down::Attention(CrossAttnDownBlock2D::new(
                        vb,
                        in_ch,
                        channels[i],
                        Some(time_dim),
                        false,
                        CrossAttnDownBlock2DConfig {
                            downblock: plain,
                            attn_num_head_channels: arch.unet_heads[i],
                            cross_attention_dim: arch.context_dim,
                            sliced_attention_size: None,
                            use_linear_projection: arch.linear_projection,
                            transformer_layers_per_block: depth,
                        },
                    )?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let last = levels - 1;
        let mid = UNetMidBlock2DCrossAttn::new(
            vb.pp("mid_block"),
            channels[last],
            Some(time_dim),
            false,
            UNetMidBlock2DCrossAttnConfig {
                resnet_eps: NORM_EPS,
                resnet_groups: Some(groups),
                attn_num_head_channels: arch.unet_heads[last],
                cross_attn_dim: arch.context_dim,
                use_linear_projection: arch.linear_projection,
                transformer_layers_per_block: arch.mid_depth,
                ..Default::default()
            },
        )?;
        let up = (0..levels)
            .map(|i| {
                // Up block i mirrors down level `levels - 1 - i`.
                let level = levels - 1 - i;
                let prev_out = if i == 0 {
                    channels[last]
                } else {
                    channels[level + 1]
                };
                let skip_in = channels[level.saturating_sub(1)];
                let plain = UpBlock2DConfig {
                    num_layers: arch.layers_per_block + 1,
                    resnet_eps: NORM_EPS,
                    resnet_groups: groups,
                    add_upsample: i + 1 < levels,
                    ..Default::default()
                };
                let vb = vb.pp(format!("up_blocks.{i}"));
                let out = channels[level];
                Ok(match arch.unet_attention[level] {
                    None => Up::Plain(UpBlock2D::new(
                        vb,
                        skip_in,
                        prev_out,
                        out,
                        Some(time_dim),
                        plain,
                    )?),
                    Some(depth) => Up::Attention(CrossAttnUpBlock2D::new(
                        vb,
                        skip_in,
                        prev_out,
                        out,
                        Some(time_dim),
                        false,
                        CrossAttnUpBlock2DConfig {
                            upblock: plain,
                            attn_num_head_channels: arch.unet_heads[level],
                            cross_attention_dim: arch.context_dim,
                            sliced_attention_size: None,
                            use_linear_projection: arch.linear_projection,
                            transformer_layers_per_block: depth,
                        },
                    )?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm_out = candle_nn::group_norm(groups, c0, NORM_EPS, vb.pp("conv_norm_out"))?;
        let conv_out = candle_nn::conv2d(c0, arch.latent_channels, 3, conv3, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            time_proj,
            time_embedding,
            add,
            down,
            mid,
            up,
            norm_out,
            conv_out,
            levels,
        })
    }

    /// The noise prediction for `xs` at `timestep` with text `context`; SDXL also takes the
    /// pooled text embedding `(batch, projection)` and the time ids `(batch, 6)`.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (batch, _, height, width) = xs.dims4()?;
        let t = (Tensor::ones(batch, xs.dtype(), xs.device())? * timestep)?;
        let mut emb = self.time_embedding.forward(&self.time_proj.forward(&t)?)?;
        match (&self.add, added) {
            (Some(add), Some((pooled, time_ids))) => {
                // diffusers: each id through the sinusoidal projection, then [pooled, ids].
                let ids = add
                    .time_ids
                    .forward(&time_ids.flatten_all()?.to_dtype(xs.dtype())?)?
                    .reshape((batch, ()))?;
                let input = Tensor::cat(&[&pooled.to_dtype(xs.dtype())?, &ids], D::Minus1)?;
                emb = (emb + add.embedding.forward(&input)?)?;
            }
            (Some(_), None) => {
                candle_core::bail!("this UNet (SDXL) needs the pooled text embedding and time ids")
            }
            (None, _) => {}
        }
        let mut xs = self.conv_in.forward(xs)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down {
            let (out, res) = match block {
                Down::Plain(b) => b.forward(&xs, Some(&emb))?,
                Down::Attention(b) => b.forward(&xs, Some(&emb), Some(context))?,
            };
            skips.extend(res);
            xs = out;
        }
        xs = self.mid.forward(&xs, Some(&emb), Some(context))?;
        // When the latent is not a multiple of the total downscale, upsample to the skip's size.
        let factor = 1 << (self.levels - 1);
        let odd = height % factor != 0 || width % factor != 0;
        for (i, block) in self.up.iter().enumerate() {
            let n = match block {
                Up::Plain(b) => b.resnets.len(),
                Up::Attention(b) => b.upblock.resnets.len(),
            };
            let res = skips.split_off(skips.len() - n);
            let size = match skips.last() {
                Some(skip) if odd && i + 1 < self.levels => {
                    let (_, _, h, w) = skip.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            xs = match block {
                Up::Plain(b) => b.forward(&xs, &res, Some(&emb), size)?,
                Up::Attention(b) => b.forward(&xs, &res, Some(&emb), size, Some(context))?,
            };
        }
        let xs = candle_nn::ops::silu(&self.norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}
