//! The conditional UNet of SD 1.5 and SDXL: candle-transformers' time embeddings, with the top
//! level, the block assembly, the resnets ([`super::resnet`]) and the spatial transformers
//! ([`super::transformer`]) here, on this crate's CPU kernels.
//!
//! candle's own `UNet2DConditionModel` has no `add_embedding`: SDXL adds to the time embedding
//! an embedding of the pooled text projection and the six "time ids" (original size, crop
//! corner, target size), each id through the same sinusoidal projection as the timestep. And
//! candle's transformer blocks use an approximate GELU. Names are diffusers' (`down_blocks.1.
//! attentions.0…`, `add_embedding.linear_1`, …).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};

use super::conv::Conv2d;
use super::detect::SdArchitecture;
use super::group_norm::GroupNorm;
use super::resnet::ResnetBlock2D;
use super::transformer::SpatialTransformer;

const NORM_EPS: f64 = 1e-5;

/// One resolution level of the down or up path.
struct Level {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    /// A stride-2 convolution (down) or nearest upsampling and a convolution (up).
    sampler: Option<Conv2d>,
}

/// SDXL's added conditioning.
struct AddEmbedding {
    time_ids: Timesteps,
    embedding: TimestepEmbedding,
}

/// The UNet.
pub(crate) struct Unet {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add: Option<AddEmbedding>,
    down: Vec<Level>,
    mid: (ResnetBlock2D, SpatialTransformer, ResnetBlock2D),
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
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
        let conv_in = Conv2d::new(arch.latent_channels, c0, 3, conv3, vb.pp("conv_in"))?;
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
        let resnet = |vb: VarBuilder<'_>, in_ch: usize, out_ch: usize| {
            ResnetBlock2D::new(vb, in_ch, out_ch, Some(time_dim), groups, NORM_EPS)
        };
        let transformer = |vb: VarBuilder<'_>, level: usize, depth: usize| {
            SpatialTransformer::new(
                vb,
                channels[level],
                arch.unet_heads[level],
                depth,
                arch.context_dim,
                arch.linear_projection,
                groups,
            )
        };
        let down_conv = candle_nn::Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let layers = arch.layers_per_block;
        let down = (0..levels)
            .map(|i| {
                let vb = vb.pp(format!("down_blocks.{i}"));
                let in_ch = if i == 0 { c0 } else { channels[i - 1] };
                let out = channels[i];
                let resnets = (0..layers)
                    .map(|j| {
                        let from = if j == 0 { in_ch } else { out };
                        resnet(vb.pp(format!("resnets.{j}")), from, out)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let attentions = match arch.unet_attention[i] {
                    None => Vec::new(),
                    Some(depth) => (0..layers)
                        .map(|j| transformer(vb.pp(format!("attentions.{j}")), i, depth))
                        .collect::<Result<Vec<_>>>()?,
                };
                let sampler = if i + 1 < levels {
                    let vb = vb.pp("downsamplers.0.conv");
                    Some(Conv2d::new(out, out, 3, down_conv, vb)?)
                } else {
                    None
                };
                Ok(Level {
                    resnets,
                    attentions,
                    sampler,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let last = levels - 1;
        let top = channels[last];
        let mid_vb = vb.pp("mid_block");
        let mid = (
            resnet(mid_vb.pp("resnets.0"), top, top)?,
            transformer(mid_vb.pp("attentions.0"), last, arch.mid_depth)?,
            resnet(mid_vb.pp("resnets.1"), top, top)?,
        );
        let up = (0..levels)
            .map(|i| {
                // Up block i mirrors down level `levels - 1 - i`; its resnets take the previous
                // output (or their own) concatenated with a skip connection.
                let level = levels - 1 - i;
                let vb = vb.pp(format!("up_blocks.{i}"));
                let out = channels[level];
                let prev = if i == 0 { top } else { channels[level + 1] };
                let level_in = if level == 0 { c0 } else { channels[level - 1] };
                let resnets = (0..=layers)
                    .map(|j| {
                        let from = if j == 0 { prev } else { out };
                        let skip = if j == layers { level_in } else { out };
                        resnet(vb.pp(format!("resnets.{j}")), from + skip, out)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let attentions = match arch.unet_attention[level] {
                    None => Vec::new(),
                    Some(depth) => (0..=layers)
                        .map(|j| transformer(vb.pp(format!("attentions.{j}")), level, depth))
                        .collect::<Result<Vec<_>>>()?,
                };
                let sampler = if i + 1 < levels {
                    let vb = vb.pp("upsamplers.0.conv");
                    Some(Conv2d::new(out, out, 3, conv3, vb)?)
                } else {
                    None
                };
                Ok(Level {
                    resnets,
                    attentions,
                    sampler,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm_out = GroupNorm::new(groups, c0, NORM_EPS, vb.pp("conv_norm_out"))?;
        let conv_out = Conv2d::new(c0, arch.latent_channels, 3, conv3, vb.pp("conv_out"))?;
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
        let batch = xs.dim(0)?;
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
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                xs = resnet.forward(&xs, Some(&emb))?;
                if let Some(attention) = level.attentions.get(j) {
                    xs = attention.forward(&xs, context)?;
                }
                skips.push(xs.clone());
            }
            if let Some(conv) = &level.sampler {
                xs = conv.forward(&xs)?;
                skips.push(xs.clone());
            }
        }
        xs = self.mid.0.forward(&xs, Some(&emb))?;
        xs = self.mid.1.forward(&xs, context)?;
        xs = self.mid.2.forward(&xs, Some(&emb))?;
        for level in &self.up {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    candle_core::Error::Msg("UNet skip connections ran out".into())
                })?;
                xs = resnet.forward(&Tensor::cat(&[&xs, &skip], 1)?, Some(&emb))?;
                if let Some(attention) = level.attentions.get(j) {
                    xs = attention.forward(&xs, context)?;
                }
            }
            if let Some(conv) = &level.sampler {
                // Nearest upsampling to the next skip's size: twice this one, except when the
                // latent was not a multiple of the total downscale.
                let (_, _, h, w) = xs.dims4()?;
                let (th, tw) = match skips.last() {
                    Some(skip) => {
                        let (_, _, sh, sw) = skip.dims4()?;
                        (sh, sw)
                    }
                    None => (2 * h, 2 * w),
                };
                xs = conv.forward(&xs.upsample_nearest2d(th, tw)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&xs)?)
    }
}
