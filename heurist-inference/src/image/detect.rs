//! A Stable Diffusion 1.5 architecture read from the tensors, since single-file checkpoints
//! carry no configuration (the way ComfyUI's model detection works).
//!
//! From the shapes: the UNet's levels, their channels, resnets per level, which levels have
//! cross-attention and how many transformer blocks, the context (text embedding) width, linear
//! or convolutional attention projections; the VAE's levels, channels, resnets per level and
//! latent channels; CLIP's vocabulary, positions, width, depth and MLP width.
//!
//! What shapes cannot tell comes from the family's conventions:
//! - UNet attention: 8 heads in every block (SD 1.5's `attention_head_dim = 8`, which diffusers
//!   reads as a head count), so a head is `channels / 8` wide;
//! - CLIP attention: heads of size 64 (`hidden / 64`, 12 for ViT-L/14's 768), and at least one
//!   head: a test model narrower than 64 has a single head as wide as the model;
//! - group norms of 32 groups, CLIP's quick-GELU, the VAE's single-head mid attention.

use std::collections::BTreeSet;

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use super::ldm_names::UnetLayout;
use crate::error::{InferenceError, Result};

/// SD 1.5's attention heads per UNet block.
pub const SD15_UNET_HEADS: usize = 8;
/// The CLIP text encoders' head size.
pub const CLIP_HEAD_SIZE: usize = 64;
/// Group norm groups in the UNet and the VAE.
const NORM_GROUPS: usize = 32;

/// The architecture of a Stable Diffusion 1.5-shaped model, as read from its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdArchitecture {
    /// UNet: output channels per level, from the highest resolution.
    pub unet_channels: Vec<usize>,
    /// UNet: per level, the transformer blocks of its cross-attention (`None`: no attention).
    pub unet_attention: Vec<Option<usize>>,
    /// UNet: resnets per down level.
    pub layers_per_block: usize,
    /// UNet: latent channels in and out.
    pub latent_channels: usize,
    /// UNet: attention heads per block (a convention, see the module docs).
    pub unet_heads: usize,
    /// UNet: width of the text embeddings it attends to.
    pub context_dim: usize,
    /// UNet: attention projections are linear layers (else 1x1 convolutions).
    pub linear_projection: bool,
    /// VAE: channels per level, from the highest resolution.
    pub vae_channels: Vec<usize>,
    /// VAE: resnets per encoder level.
    pub vae_layers_per_block: usize,
    /// CLIP: vocabulary size.
    pub clip_vocab: usize,
    /// CLIP: positions (77).
    pub clip_positions: usize,
    /// CLIP: width.
    pub clip_hidden: usize,
    /// CLIP: MLP width.
    pub clip_intermediate: usize,
    /// CLIP: layers.
    pub clip_layers: usize,
    /// CLIP: attention heads (a convention, see the module docs).
    pub clip_heads: usize,
}

impl SdArchitecture {
    /// How many image pixels one latent pixel covers (8 for SD 1.5's four VAE levels).
    pub fn vae_scale_factor(&self) -> usize {
        1 << (self.vae_channels.len() - 1)
    }

    /// The LDM names' layout of this UNet.
    pub(crate) fn unet_layout(&self) -> UnetLayout {
        UnetLayout {
            layers: self.layers_per_block,
            up_has_attention: self
                .unet_attention
                .iter()
                .rev()
                .map(Option::is_some)
                .collect(),
        }
    }

    /// candle's UNet configuration.
    pub(crate) fn unet_config(&self) -> UNet2DConditionModelConfig {
        UNet2DConditionModelConfig {
            blocks: self
                .unet_channels
                .iter()
                .zip(&self.unet_attention)
                .map(|(&out_channels, &use_cross_attn)| BlockConfig {
                    out_channels,
                    use_cross_attn,
                    attention_head_dim: self.unet_heads,
                })
                .collect(),
            layers_per_block: self.layers_per_block,
            norm_num_groups: NORM_GROUPS,
            cross_attention_dim: self.context_dim,
            use_linear_projection: self.linear_projection,
            ..UNet2DConditionModelConfig::default()
        }
    }

    /// candle's VAE configuration.
    pub(crate) fn vae_config(&self) -> AutoEncoderKLConfig {
        AutoEncoderKLConfig {
            block_out_channels: self.vae_channels.clone(),
            layers_per_block: self.vae_layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: NORM_GROUPS,
            use_quant_conv: true,
            use_post_quant_conv: true,
        }
    }

    /// candle's CLIP text configuration.
    pub(crate) fn clip_config(&self) -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: self.clip_vocab,
            embed_dim: self.clip_hidden,
            activation: Activation::QuickGelu,
            intermediate_size: self.clip_intermediate,
            max_position_embeddings: self.clip_positions,
            pad_with: None,
            num_hidden_layers: self.clip_layers,
            num_attention_heads: self.clip_heads,
            projection_dim: self.clip_hidden,
        }
    }
}

/// Per UNet level, the name prefixes of its first resnet's last conv and of its attention.
type LevelNames = Box<dyn Fn(usize) -> (String, String)>;

/// Tensor shapes by name, for one component (names relative to the component).
pub(crate) trait Shapes {
    /// The shape of a tensor, `None` when there is no such tensor.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Every tensor name.
    fn names(&self) -> Vec<String>;
}

/// The three components' tensors, in LDM or diffusers names.
pub(crate) struct ComponentShapes<'a> {
    pub(crate) unet: &'a dyn Shapes,
    pub(crate) vae: &'a dyn Shapes,
    pub(crate) clip: &'a dyn Shapes,
    /// Whether the names are LDM's (else diffusers').
    pub(crate) ldm: bool,
    /// For error messages: the file or folder.
    pub(crate) source: &'a std::path::Path,
}

impl ComponentShapes<'_> {
    fn fail(&self, problem: String) -> InferenceError {
        InferenceError::UnrecognisedArchitecture {
            path: self.source.to_owned(),
            problem,
        }
    }

    fn dim(&self, shapes: &dyn Shapes, name: &str, axis: usize) -> Result<usize> {
        shapes
            .shape(name)
            .and_then(|s| s.get(axis).copied())
            .ok_or_else(|| self.fail(format!("tensor {name} (or its axis {axis}) is missing")))
    }

    /// The distinct integers `N` in names `prefix N .…`.
    fn indices(shapes: &dyn Shapes, prefix: &str) -> BTreeSet<usize> {
        shapes
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .collect()
    }

    /// Counts `0..n` indices under `prefix`, requiring them to be contiguous.
    fn count(&self, shapes: &dyn Shapes, prefix: &str) -> Result<usize> {
        let found = Self::indices(shapes, prefix);
        let n = found.len();
        if n == 0 || found.iter().copied().ne(0..n) {
            return Err(self.fail(format!("blocks {prefix}N are not numbered 0.. ({found:?})")));
        }
        Ok(n)
    }

    /// Reads the architecture.
    pub(crate) fn detect(&self) -> Result<SdArchitecture> {
        let unet = self.unet;
        // UNet, by the first block of each level: (resnet prefix, attention prefix).
        let (levels, layers, level_block): (usize, usize, LevelNames) = if self.ldm {
            let blocks = Self::indices(unet, "input_blocks.");
            let downsamplers = blocks
                .iter()
                .filter(|&&i| {
                    unet.shape(&format!("input_blocks.{i}.0.op.weight"))
                        .is_some()
                })
                .count();
            let levels = downsamplers + 1;
            let inner = blocks.len().saturating_sub(1 + downsamplers);
            if blocks.is_empty() || inner == 0 || inner % levels != 0 {
                return Err(self.fail(format!(
                    "{} input blocks with {downsamplers} downsamplers make no UNet",
                    blocks.len()
                )));
            }
            let layers = inner / levels;
            (
                levels,
                layers,
                Box::new(move |level| {
                    let i = 1 + level * (layers + 1);
                    (
                        format!("input_blocks.{i}.0.out_layers.3"),
                        format!("input_blocks.{i}.1."),
                    )
                }),
            )
        } else {
            let levels = self.count(unet, "down_blocks.")?;
            let layers = self.count(unet, "down_blocks.0.resnets.")?;
            (
                levels,
                layers,
                Box::new(|level| {
                    (
                        format!("down_blocks.{level}.resnets.0.conv2"),
                        format!("down_blocks.{level}.attentions.0."),
                    )
                }),
            )
        };
        let (conv_in, conv_out) = if self.ldm {
            ("input_blocks.0.0.weight", "out.2.weight")
        } else {
            ("conv_in.weight", "conv_out.weight")
        };
        let latent_channels = self.dim(unet, conv_in, 1)?;
        if self.dim(unet, conv_out, 0)? != latent_channels {
            return Err(self.fail("the UNet's input and output channels differ".into()));
        }
        let mut unet_channels = Vec::with_capacity(levels);
        let mut unet_attention = Vec::with_capacity(levels);
        let mut context_dim = None;
        let mut linear_projection = false;
        for level in 0..levels {
            let (resnet, attention) = level_block(level);
            unet_channels.push(self.dim(unet, &format!("{resnet}.weight"), 0)?);
            let proj_in = unet.shape(&format!("{attention}proj_in.weight"));
            unet_attention.push(match proj_in {
                None => None,
                Some(shape) => {
                    linear_projection = shape.len() == 2;
                    let depth = self.count(unet, &format!("{attention}transformer_blocks."))?;
                    context_dim = Some(self.dim(
                        unet,
                        &format!("{attention}transformer_blocks.0.attn2.to_k.weight"),
                        1,
                    )?);
                    Some(depth)
                }
            });
        }
        let context_dim =
            context_dim.ok_or_else(|| self.fail("the UNet has no cross-attention".into()))?;
        if let Some(&bad) = unet_channels
            .iter()
            .find(|&&c| c % NORM_GROUPS != 0 || c % SD15_UNET_HEADS != 0)
        {
            return Err(self.fail(format!(
                "UNet block width {bad} is not a multiple of {NORM_GROUPS} norm groups"
            )));
        }

        // VAE.
        let vae = self.vae;
        let (down, block) = if self.ldm {
            ("encoder.down.", "block")
        } else {
            ("encoder.down_blocks.", "resnets")
        };
        let vae_levels = self.count(vae, down)?;
        let vae_layers_per_block = self.count(vae, &format!("{down}0.{block}."))?;
        let vae_channels = (0..vae_levels)
            .map(|l| self.dim(vae, &format!("{down}{l}.{block}.0.conv1.weight"), 0))
            .collect::<Result<Vec<_>>>()?;
        let vae_latent = self.dim(vae, "post_quant_conv.weight", 0)?;
        if vae_latent != latent_channels {
            return Err(self.fail(format!(
                "the VAE has {vae_latent} latent channels, the UNet {latent_channels}"
            )));
        }

        // CLIP (names relative to `text_model.`).
        let clip = self.clip;
        let clip_vocab = self.dim(clip, "embeddings.token_embedding.weight", 0)?;
        let clip_hidden = self.dim(clip, "embeddings.token_embedding.weight", 1)?;
        let clip_positions = self.dim(clip, "embeddings.position_embedding.weight", 0)?;
        let clip_layers = self.count(clip, "encoder.layers.")?;
        let clip_intermediate = self.dim(clip, "encoder.layers.0.mlp.fc1.weight", 0)?;
        let clip_heads = (clip_hidden / CLIP_HEAD_SIZE).max(1);
        if clip_hidden % clip_heads != 0 {
            return Err(self.fail(format!(
                "CLIP width {clip_hidden} is not a multiple of the head size {CLIP_HEAD_SIZE}"
            )));
        }
        if clip_hidden != context_dim {
            return Err(self.fail(format!(
                "CLIP is {clip_hidden} wide but the UNet attends to {context_dim}-wide context \
                 (an SDXL checkpoint has two text encoders and is not supported here yet)"
            )));
        }

        Ok(SdArchitecture {
            unet_channels,
            unet_attention,
            layers_per_block: layers,
            latent_channels,
            unet_heads: SD15_UNET_HEADS,
            context_dim,
            linear_projection,
            vae_channels,
            vae_layers_per_block,
            clip_vocab,
            clip_positions,
            clip_hidden,
            clip_intermediate,
            clip_layers,
            clip_heads,
        })
    }
}
