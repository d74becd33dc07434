//! A Stable Diffusion architecture (SD 1.5 or SDXL) read from the tensors, since single-file
//! checkpoints carry no configuration (the way ComfyUI's model detection works).
//!
//! From the shapes: the UNet's levels, their channels, resnets per level, which levels have
//! cross-attention and how many transformer blocks (per level and in the mid block), the context
//! (text embedding) width, linear or convolutional attention projections, SDXL's added
//! conditioning (`add_embedding` input width, hence the time-id embedding width); the VAE's
//! levels, channels, resnets per level and latent channels; each CLIP text encoder's vocabulary,
//! positions, width, depth, MLP width and projection. The family is SDXL when a second text
//! encoder is present.
//!
//! What shapes cannot tell comes from the families' conventions:
//! - UNet attention heads: SD 1.5 has 8 in every block (its `attention_head_dim = 8`, which
//!   diffusers reads as a head count); SDXL has heads of size 64 (`channels / 64`, at least one);
//! - CLIP attention: heads of size 64 (`hidden / 64`, 12 for ViT-L/14's 768), and at least one
//!   head: a test model narrower than 64 has a single head as wide as the model;
//! - CLIP's activation: quick-GELU for OpenAI's ViT-L (SD 1.5, SDXL's first encoder), exact GELU
//!   for OpenCLIP's ViT-bigG (SDXL's second);
//! - group norms of 32 groups, the VAE's single-head mid attention.

use std::collections::BTreeSet;

use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use super::clip_text::{ClipActivation, ClipDims};
use super::ldm_names::UnetLayout;
use crate::error::{InferenceError, Result};

/// SD 1.5's attention heads per UNet block.
pub const SD15_UNET_HEADS: usize = 8;
/// The head size of SDXL's UNet and of the CLIP text encoders.
pub const HEAD_SIZE: usize = 64;
/// Group norm groups in the UNet and the VAE.
const NORM_GROUPS: usize = 32;

/// Which Stable Diffusion family a model belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdFamily {
    /// Stable Diffusion 1.x: one CLIP ViT-L text encoder, last hidden state.
    Sd15,
    /// Stable Diffusion XL: CLIP ViT-L and OpenCLIP ViT-bigG, penultimate hidden states, pooled
    /// embedding and size conditioning.
    Sdxl,
}

/// SDXL's added conditioning: `[pooled projection, 6 time ids x time_id_dim]` into
/// `add_embedding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddEmbeddingDims {
    /// Width of each time id's sinusoidal embedding (256 in SDXL).
    pub time_id_dim: usize,
    /// `add_embedding`'s input width (2816 in SDXL).
    pub in_features: usize,
}

/// The architecture of a Stable Diffusion model, as read from its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdArchitecture {
    /// SD 1.5 or SDXL.
    pub family: SdFamily,
    /// UNet: output channels per level, from the highest resolution.
    pub unet_channels: Vec<usize>,
    /// UNet: per level, the transformer blocks of its cross-attention (`None`: no attention).
    pub unet_attention: Vec<Option<usize>>,
    /// UNet: transformer blocks in the mid block.
    pub mid_depth: usize,
    /// UNet: resnets per down level.
    pub layers_per_block: usize,
    /// UNet: latent channels in and out.
    pub latent_channels: usize,
    /// UNet: attention heads per level (a convention, see the module docs).
    pub unet_heads: Vec<usize>,
    /// UNet: width of the text embeddings it attends to.
    pub context_dim: usize,
    /// UNet: attention projections are linear layers (else 1x1 convolutions).
    pub linear_projection: bool,
    /// UNet: SDXL's added conditioning.
    pub add_embedding: Option<AddEmbeddingDims>,
    /// UNet and VAE: group norm groups (a convention).
    pub norm_groups: usize,
    /// VAE: channels per level, from the highest resolution.
    pub vae_channels: Vec<usize>,
    /// VAE: resnets per encoder level.
    pub vae_layers_per_block: usize,
    /// The (first) text encoder, CLIP ViT-L.
    pub clip: ClipDims,
    /// SDXL's second text encoder, OpenCLIP ViT-bigG with its projection.
    pub clip2: Option<ClipDims>,
}

impl SdArchitecture {
    /// How many image pixels one latent pixel covers (8 for the four VAE levels of SD).
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

    /// candle's VAE configuration.
    pub(crate) fn vae_config(&self) -> AutoEncoderKLConfig {
        AutoEncoderKLConfig {
            block_out_channels: self.vae_channels.clone(),
            layers_per_block: self.vae_layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: self.norm_groups,
            use_quant_conv: true,
            use_post_quant_conv: true,
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
    /// The first text encoder, in transformers' names (probed, `names` unused).
    pub(crate) clip: &'a dyn Shapes,
    /// SDXL's second text encoder, in transformers' names (probed, `names` unused).
    pub(crate) clip2: Option<&'a dyn Shapes>,
    /// Whether the UNet's and VAE's names are LDM's (else diffusers').
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
        if let Some(&bad) = unet_channels.iter().find(|&&c| c % NORM_GROUPS != 0) {
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

        // Text encoders.
        let clip = self.clip_dims(self.clip, ClipActivation::QuickGelu, false)?;
        let clip2 = match self.clip2 {
            None => None,
            Some(shapes) => Some(self.clip_dims(shapes, ClipActivation::Gelu, true)?),
        };
        let family = if clip2.is_some() {
            SdFamily::Sdxl
        } else {
            SdFamily::Sd15
        };
        let text_width = clip.hidden + clip2.as_ref().map_or(0, |c| c.hidden);
        if text_width != context_dim {
            return Err(self.fail(format!(
                "the text encoders are {text_width} wide but the UNet attends to \
                 {context_dim}-wide context"
            )));
        }

        // The mid block and SDXL's added conditioning.
        let (mid, add) = if self.ldm {
            ("middle_block.1.transformer_blocks.", "label_emb.0.0.weight")
        } else {
            (
                "mid_block.attentions.0.transformer_blocks.",
                "add_embedding.linear_1.weight",
            )
        };
        let mid_depth = self.count(unet, mid)?;
        let add_embedding = match (unet.shape(add), &clip2) {
            (None, None) => None,
            (Some(shape), Some(clip2)) => {
                let in_features = shape.get(1).copied().unwrap_or(0);
                let pooled = clip2.projection.unwrap_or(0);
                let ids = in_features.saturating_sub(pooled);
                if ids == 0 || ids % 6 != 0 {
                    return Err(self.fail(format!(
                        "add_embedding takes {in_features} features, which is not the pooled \
                         {pooled} plus 6 time ids"
                    )));
                }
                Some(AddEmbeddingDims {
                    time_id_dim: ids / 6,
                    in_features,
                })
            }
            (Some(_), None) => {
                return Err(self.fail(
                    "an SDXL UNet (add_embedding) without a second text \
                                      encoder"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(self.fail("two text encoders but no add_embedding in the UNet".into()));
            }
        };
        let unet_heads = unet_channels
            .iter()
            .map(|&c| match family {
                SdFamily::Sd15 => SD15_UNET_HEADS,
                SdFamily::Sdxl => (c / HEAD_SIZE).max(1),
            })
            .collect();

        Ok(SdArchitecture {
            family,
            unet_channels,
            unet_attention,
            mid_depth,
            layers_per_block: layers,
            latent_channels,
            unet_heads,
            context_dim,
            linear_projection,
            add_embedding,
            norm_groups: NORM_GROUPS,
            vae_channels,
            vae_layers_per_block,
            clip,
            clip2,
        })
    }

    /// One text encoder's shape, probing transformers' names.
    fn clip_dims(
        &self,
        clip: &dyn Shapes,
        activation: ClipActivation,
        projected: bool,
    ) -> Result<ClipDims> {
        let embedding = "text_model.embeddings.token_embedding.weight";
        let vocab = self.dim(clip, embedding, 0)?;
        let hidden = self.dim(clip, embedding, 1)?;
        let positions = self.dim(clip, "text_model.embeddings.position_embedding.weight", 0)?;
        let layers = (0..)
            .take_while(|i| {
                clip.shape(&format!("text_model.encoder.layers.{i}.layer_norm1.weight"))
                    .is_some()
            })
            .count();
        if layers == 0 {
            return Err(self.fail("a CLIP text encoder without layers".into()));
        }
        let intermediate = self.dim(clip, "text_model.encoder.layers.0.mlp.fc1.weight", 0)?;
        let heads = (hidden / HEAD_SIZE).max(1);
        if hidden % heads != 0 {
            return Err(self.fail(format!(
                "CLIP width {hidden} is not a multiple of the head size {HEAD_SIZE}"
            )));
        }
        let projection = if projected {
            Some(self.dim(clip, "text_projection.weight", 0)?)
        } else {
            None
        };
        Ok(ClipDims {
            vocab,
            positions,
            hidden,
            intermediate,
            layers,
            heads,
            projection,
            activation,
        })
    }
}
