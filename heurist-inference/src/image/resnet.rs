//! The UNet's resnet block (diffusers' `ResnetBlock2D`): group norm and SiLU, a 3x3
//! convolution, the time embedding added per channel, group norm and SiLU, a 3x3 convolution,
//! and the residual (through a 1x1 convolution when the channel count changes).
//!
//! Written here rather than taken from candle-transformers so that it runs on this crate's
//! CPU kernels ([`super::conv`], [`super::group_norm`]): the resnets are most of a UNet step.
//! Names are diffusers'.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use super::conv::Conv2d;
use super::group_norm::GroupNorm;

/// One resnet block.
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `in_channels` to `out_channels`, with the time embedding of width `temb` when given.
    pub(crate) fn new(
        vb: VarBuilder<'_>,
        in_channels: usize,
        out_channels: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let conv3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            norm1: GroupNorm::new(groups, in_channels, eps, vb.pp("norm1"))?,
            conv1: Conv2d::new(in_channels, out_channels, 3, conv3, vb.pp("conv1"))?,
            time_emb_proj: temb
                .map(|t| candle_nn::linear(t, out_channels, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: GroupNorm::new(groups, out_channels, eps, vb.pp("norm2"))?,
            conv2: Conv2d::new(out_channels, out_channels, 3, conv3, vb.pp("conv2"))?,
            conv_shortcut: (in_channels != out_channels)
                .then(|| {
                    Conv2d::new(
                        in_channels,
                        out_channels,
                        1,
                        Conv2dConfig::default(),
                        vb.pp("conv_shortcut"),
                    )
                })
                .transpose()?,
        })
    }

    /// The block on `xs` (batch, channels, h, w) with the time embedding `temb` (batch, width).
    pub(crate) fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let mut h = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        if let (Some(temb), Some(proj)) = (temb, &self.time_emb_proj) {
            let t = proj
                .forward(&candle_nn::ops::silu(temb)?)?
                .unsqueeze(2)?
                .unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        shortcut + h
    }
}
