//! diffusers tensor names to the original LDM / A1111 names of single-file checkpoints.
//!
//! candle-transformers' Stable Diffusion modules ask for tensors by their diffusers names
//! (`down_blocks.0.resnets.1.conv1.weight`); the network's checkpoints store them under the
//! names of the original latent-diffusion code (`input_blocks.2.0.in_layers.2.weight`). The
//! checkpoint backend ([`super::checkpoint`]) translates every lookup with these functions, so the
//! file is read in place and never rewritten.
//!
//! The LDM UNet numbers its blocks flat: `input_blocks.0` is `conv_in`, then each level has
//! `layers` blocks `[resnet, attention?]` followed by one downsampler block (not after the last
//! level); `middle_block` is `[resnet, attention, resnet]`; `output_blocks` mirror the levels
//! with `layers + 1` blocks each, the level's upsampler in the last block after the attention
//! (index 2) or, when the level has none, in its place (index 1). The LDM VAE counts the decoder's
//! levels from the bottom (`up.0` is the last diffusers up block) and stores the mid-block
//! attention's projections as 1x1 convolutions.

/// Where a module's tensor is in a file: a name, and for fused or transposed storage, how to
/// get the module's tensor out of the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lookup {
    /// The file's tensor name.
    pub(crate) key: String,
    /// `(i, n)`: the module's tensor is the `i`-th of `n` equal slices along the first axis
    /// (OpenCLIP's fused q/k/v projections).
    pub(crate) part: Option<(usize, usize)>,
    /// The stored tensor is the module's transposed (OpenCLIP's `text_projection`).
    pub(crate) transpose: bool,
}

impl Lookup {
    /// A tensor stored as the module wants it.
    pub(crate) fn plain(key: String) -> Self {
        Self {
            key,
            part: None,
            transpose: false,
        }
    }
}

/// Where transformers' name for a CLIP text tensor (`text_model.…`, `text_projection.weight`)
/// is in an OpenCLIP state dict (SDXL's `conditioner.embedders.1.model.`, without the prefix).
pub(crate) fn open_clip(name: &str) -> Option<Lookup> {
    let fixed = match name {
        "text_model.embeddings.token_embedding.weight" => Some("token_embedding.weight".into()),
        "text_model.embeddings.position_embedding.weight" => Some("positional_embedding".into()),
        "text_projection.weight" => {
            return Some(Lookup {
                transpose: true,
                ..Lookup::plain("text_projection".into())
            });
        }
        _ => name
            .strip_prefix("text_model.final_layer_norm.")
            .map(|param| format!("ln_final.{param}")),
    };
    if let Some(key) = fixed {
        return Some(Lookup::plain(key));
    }
    let rest = name.strip_prefix("text_model.encoder.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    let block = format!("transformer.resblocks.{layer}");
    let fused = |i| Lookup {
        part: Some((i, 3)),
        ..Lookup::plain(format!("{block}.attn.in_proj_{param}"))
    };
    Some(match module {
        "self_attn.q_proj" => fused(0),
        "self_attn.k_proj" => fused(1),
        "self_attn.v_proj" => fused(2),
        _ => {
            let ldm = match module {
                "layer_norm1" => "ln_1",
                "layer_norm2" => "ln_2",
                "self_attn.out_proj" => "attn.out_proj",
                "mlp.fc1" => "mlp.c_fc",
                "mlp.fc2" => "mlp.c_proj",
                _ => return None,
            };
            Lookup::plain(format!("{block}.{ldm}.{param}"))
        }
    })
}

/// What the UNet name mapping needs to know of the architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnetLayout {
    /// Resnets per down level (`layers_per_block`).
    pub(crate) layers: usize,
    /// Per diffusers up block (from the lowest resolution), whether it has attention.
    pub(crate) up_has_attention: Vec<bool>,
}

/// A UNet resnet's diffusers layer name to its LDM one.
fn resnet_layer(layer: &str) -> Option<&'static str> {
    Some(match layer {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    })
}

/// `resnets.J.LAYER.rest` / `attentions.J.rest` after a block prefix, as (kind, J, LAYER.rest).
fn split_member(rest: &str) -> Option<(&str, usize, &str)> {
    let (kind, rest) = rest.split_once('.')?;
    let (index, tail) = rest.split_once('.')?;
    Some((kind, index.parse().ok()?, tail))
}

/// The resnet tail `norm1.weight` in LDM terms (`in_layers.0.weight`).
fn resnet_tail(tail: &str) -> Option<String> {
    let (layer, param) = tail.split_once('.')?;
    Some(format!("{}.{param}", resnet_layer(layer)?))
}

/// The LDM name (without `model.diffusion_model.`) of a diffusers UNet tensor name, or `None`
/// for a name this layout does not have.
pub(crate) fn unet(name: &str, layout: &UnetLayout) -> Option<String> {
    let l = layout.layers;
    for (diffusers, ldm) in [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        // SDXL's added conditioning.
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
    ] {
        if let Some(param) = name.strip_prefix(diffusers) {
            return Some(format!("{ldm}{param}"));
        }
    }
    if let Some(rest) = name.strip_prefix("down_blocks.") {
        let (level, rest) = rest.split_once('.')?;
        let level: usize = level.parse().ok()?;
        if let Some(param) = rest.strip_prefix("downsamplers.0.conv.") {
            return Some(format!(
                "input_blocks.{}.0.op.{param}",
                (level + 1) * (l + 1)
            ));
        }
        let (kind, j, tail) = split_member(rest)?;
        let index = 1 + level * (l + 1) + j;
        return match kind {
            "resnets" if j < l => Some(format!("input_blocks.{index}.0.{}", resnet_tail(tail)?)),
            "attentions" if j < l => Some(format!("input_blocks.{index}.1.{tail}")),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("mid_block.") {
        let (kind, j, tail) = split_member(rest)?;
        return match (kind, j) {
            ("resnets", 0 | 1) => Some(format!("middle_block.{}.{}", 2 * j, resnet_tail(tail)?)),
            ("attentions", 0) => Some(format!("middle_block.1.{tail}")),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("up_blocks.") {
        let (level, rest) = rest.split_once('.')?;
        let level: usize = level.parse().ok()?;
        let has_attention = *layout.up_has_attention.get(level)?;
        if let Some(param) = rest.strip_prefix("upsamplers.0.conv.") {
            let slot = if has_attention { 2 } else { 1 };
            return Some(format!(
                "output_blocks.{}.{slot}.conv.{param}",
                level * (l + 1) + l
            ));
        }
        let (kind, j, tail) = split_member(rest)?;
        let index = level * (l + 1) + j;
        return match kind {
            "resnets" if j <= l => Some(format!("output_blocks.{index}.0.{}", resnet_tail(tail)?)),
            "attentions" if j <= l => Some(format!("output_blocks.{index}.1.{tail}")),
            _ => None,
        };
    }
    None
}

/// The LDM name (without `first_stage_model.`) of a diffusers VAE tensor name, for a VAE with
/// `levels` resolution levels, or `None` for a name this layout does not have.
pub(crate) fn vae(name: &str, levels: usize) -> Option<String> {
    if name.starts_with("quant_conv.") || name.starts_with("post_quant_conv.") {
        return Some(name.to_owned());
    }
    let (coder, rest) = name.split_once('.')?;
    if coder != "encoder" && coder != "decoder" {
        return None;
    }
    for (diffusers, ldm) in [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("conv_norm_out.", "norm_out."),
    ] {
        if let Some(param) = rest.strip_prefix(diffusers) {
            return Some(format!("{coder}.{ldm}{param}"));
        }
    }
    if let Some(rest) = rest.strip_prefix("mid_block.") {
        let (kind, j, tail) = split_member(rest)?;
        return match (kind, j) {
            ("resnets", 0 | 1) => {
                Some(format!("{coder}.mid.block_{}.{}", j + 1, vae_resnet(tail)?))
            }
            ("attentions", 0) => {
                let (layer, param) = tail.rsplit_once('.')?;
                let ldm = match layer {
                    "group_norm" => "norm",
                    "to_q" => "q",
                    "to_k" => "k",
                    "to_v" => "v",
                    "to_out.0" => "proj_out",
                    _ => return None,
                };
                Some(format!("{coder}.mid.attn_1.{ldm}.{param}"))
            }
            _ => None,
        };
    }
    let (blocks, ldm_blocks, sampler, ldm_sampler) = match coder {
        "encoder" => ("down_blocks.", "down", "downsamplers.0.", "downsample."),
        _ => ("up_blocks.", "up", "upsamplers.0.", "upsample."),
    };
    let rest = rest.strip_prefix(blocks)?;
    let (level, rest) = rest.split_once('.')?;
    let level: usize = level.parse().ok()?;
    if level >= levels {
        return None;
    }
    // The LDM decoder counts its levels from the lowest resolution.
    let ldm_level = if coder == "encoder" {
        level
    } else {
        levels - 1 - level
    };
    if let Some(tail) = rest.strip_prefix(sampler) {
        return Some(format!(
            "{coder}.{ldm_blocks}.{ldm_level}.{ldm_sampler}{tail}"
        ));
    }
    let (kind, j, tail) = split_member(rest)?;
    (kind == "resnets").then_some(())?;
    Some(format!(
        "{coder}.{ldm_blocks}.{ldm_level}.block.{j}.{}",
        vae_resnet(tail)?
    ))
}

/// A VAE resnet's tail: the layers keep their names but the shortcut.
fn vae_resnet(tail: &str) -> Option<String> {
    let (layer, param) = tail.split_once('.')?;
    let layer = match layer {
        "norm1" | "conv1" | "norm2" | "conv2" => layer,
        "conv_shortcut" => "nin_shortcut",
        _ => return None,
    };
    Some(format!("{layer}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD 1.5's layout: four levels, two layers, attention in all up blocks but the first.
    fn sd15() -> UnetLayout {
        UnetLayout {
            layers: 2,
            up_has_attention: vec![false, true, true, true],
        }
    }

    #[test]
    fn unet_names_follow_the_ldm_numbering() {
        let cases = [
            ("conv_in.weight", "input_blocks.0.0.weight"),
            ("time_embedding.linear_2.bias", "time_embed.2.bias"),
            (
                "down_blocks.0.resnets.1.conv1.weight",
                "input_blocks.2.0.in_layers.2.weight",
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "down_blocks.2.downsamplers.0.conv.bias",
                "input_blocks.9.0.op.bias",
            ),
            (
                "down_blocks.1.resnets.0.conv_shortcut.weight",
                "input_blocks.4.0.skip_connection.weight",
            ),
            (
                "mid_block.resnets.1.time_emb_proj.weight",
                "middle_block.2.emb_layers.1.weight",
            ),
            (
                "mid_block.attentions.0.proj_in.weight",
                "middle_block.1.proj_in.weight",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.1.conv.weight",
            ),
            (
                "up_blocks.1.upsamplers.0.conv.weight",
                "output_blocks.5.2.conv.weight",
            ),
            (
                "up_blocks.3.resnets.2.norm2.weight",
                "output_blocks.11.0.out_layers.0.weight",
            ),
            (
                "up_blocks.3.attentions.2.norm.bias",
                "output_blocks.11.1.norm.bias",
            ),
            ("conv_out.bias", "out.2.bias"),
        ];
        for (diffusers, ldm) in cases {
            assert_eq!(
                unet(diffusers, &sd15()).as_deref(),
                Some(ldm),
                "{diffusers}"
            );
        }
        assert_eq!(unet("down_blocks.0.resnets.2.conv1.weight", &sd15()), None);
        assert_eq!(unet("up_blocks.4.resnets.0.conv1.weight", &sd15()), None);
        assert_eq!(
            unet("add_embedding.linear_1.weight", &sd15()).as_deref(),
            Some("label_emb.0.0.weight")
        );
    }

    #[test]
    fn open_clip_names_split_the_fused_attention() {
        let q = open_clip("text_model.encoder.layers.3.self_attn.k_proj.bias").unwrap();
        assert_eq!(q.key, "transformer.resblocks.3.attn.in_proj_bias");
        assert_eq!(q.part, Some((1, 3)));
        let fc = open_clip("text_model.encoder.layers.0.mlp.fc2.weight").unwrap();
        assert_eq!(
            fc,
            Lookup::plain("transformer.resblocks.0.mlp.c_proj.weight".into())
        );
        let proj = open_clip("text_projection.weight").unwrap();
        assert!(proj.transpose && proj.key == "text_projection");
        assert_eq!(
            open_clip("text_model.final_layer_norm.bias"),
            Some(Lookup::plain("ln_final.bias".into()))
        );
        assert_eq!(open_clip("text_model.encoder.layers.0.bogus.weight"), None);
    }

    #[test]
    fn vae_names_follow_the_ldm_numbering() {
        let cases = [
            ("encoder.conv_norm_out.weight", "encoder.norm_out.weight"),
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.bias",
                "encoder.down.1.block.0.nin_shortcut.bias",
            ),
            (
                "encoder.down_blocks.2.downsamplers.0.conv.weight",
                "encoder.down.2.downsample.conv.weight",
            ),
            (
                "decoder.up_blocks.0.resnets.2.conv2.weight",
                "decoder.up.3.block.2.conv2.weight",
            ),
            (
                "decoder.up_blocks.2.upsamplers.0.conv.bias",
                "decoder.up.1.upsample.conv.bias",
            ),
            (
                "decoder.mid_block.resnets.1.norm1.weight",
                "decoder.mid.block_2.norm1.weight",
            ),
            (
                "decoder.mid_block.attentions.0.to_out.0.weight",
                "decoder.mid.attn_1.proj_out.weight",
            ),
            (
                "encoder.mid_block.attentions.0.group_norm.bias",
                "encoder.mid.attn_1.norm.bias",
            ),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (diffusers, ldm) in cases {
            assert_eq!(vae(diffusers, 4).as_deref(), Some(ldm), "{diffusers}");
        }
        assert_eq!(vae("decoder.up_blocks.4.resnets.0.conv1.weight", 4), None);
    }
}
