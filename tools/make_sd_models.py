#!/usr/bin/env python3
"""Build tiny random-weight Stable Diffusion models (SD 1.5, SDXL, a kohya LoRA) and record what
diffusers computes with them.

No real weights reach the test machines, so heurist-inference's image engine is checked against
models of the real architectures (UNet2DConditionModel with cross-attention, AutoencoderKL,
CLIPTextModel, CLIPTextModelWithProjection) with small widths and seeded random weights. The
independent peers are diffusers 0.30.2, transformers 4.44.2 and peft 0.12.0 on torch 2.4.0 (CPU),
in tools/.venv-image (the venv of tools/make_image_fixtures.py; this script adds its pins there).

    python3 tools/make_sd_models.py

Every weight is rounded to an f16 value before anything is recorded, so the f16 files hold the
f32 models exactly: the Rust tests load them as f16 and, converted tensor by tensor to an f32
file, as f32, and both must give diffusers' f32 results (an f32 copy in the repository would
double its share for no information).

The models are saved as single-file checkpoints in the original LDM / A1111 layout, the layout of
the network's civitai checkpoints (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`; SDXL: `conditioner.embedders.0.transformer.*` and OpenCLIP's
`conditioner.embedders.1.model.*`). The diffusers -> LDM / OpenCLIP key mappings are written here
(`ldm_unet_key`, `ldm_vae_key`, `openclip_key`) and proven independent: diffusers' own
single-file converters (`convert_ldm_*_checkpoint`, `convert_open_clip_checkpoint`) must map the
files back onto exactly the original tensors. The SD 1.5 model is also saved as a
diffusers-layout folder (unet/, vae/, text_encoder/).

Writes heurist-inference/tests/fixtures/sd/ (SOURCE.md there lists every tensor):
  tiny-sd15-fp16.safetensors     SD 1.5, single-file LDM checkpoint
  tiny-sd15-diffusers/           the same, diffusers-layout folder
  tiny-sdxl-fp16.safetensors     SDXL, single-file LDM checkpoint
  tiny-sd15-lora.safetensors     a kohya LoRA for the SD 1.5 model
  tiny-sdxl-lora.safetensors     a kohya LoRA for the SDXL model
  tiny-vae-override.safetensors  another VAE for the SD 1.5 model, as the registry's VAE files
  reference.safetensors          recorded tensors: text encoder outputs, one UNet forward, one
                                 VAE decode, whole seeded CFG runs (per-step latents, image)
  reference.json                 the inputs: token ids, timestep, seeds, steps, guidance, sizes
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "tools", ".venv-image")
OUT = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "sd")
PINS = ["torch==2.4.0", "diffusers==0.30.2", "numpy==1.26.4", "huggingface_hub==0.24.6",
        "transformers==4.44.2", "safetensors==0.8.0", "peft==0.12.0"]

# The architecture. SD 1.5 is blocks (320, 640, 1280, 1280), cross-attention in the first three,
# 2 layers per block, 8 heads, context 768. The tiny one keeps every kind of block and the LDM
# numbering they produce (attention before and after an upsampler, up-block shortcuts), but puts
# the plain blocks first so that attention only runs at a quarter of the latent resolution: the
# test of a real 512x768 job then stays cheap. Widths are as small as 32 norm groups allow, to keep the
# repository small; the tiny SDXL below has the channel change (down-block shortcuts) and one
# layer per block, so that the two models cover both kinds of LDM numbering.
UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 32, 32),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=8,
    attention_head_dim=8,  # diffusers' SD 1.5 convention: this is the number of heads
    norm_num_groups=32,
)
# Four levels as in SD 1.5, so that the latent is 1/8 of the image.
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=64,
    scaling_factor=0.18215,
)
# CLIP ViT-L/14's text tower has hidden 768, 12 layers, 12 heads (head size 64); this one keeps
# the vocabulary and positions (so real token ids work) and shrinks the rest.
CLIP = dict(
    vocab_size=49408,
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=1,  # hidden / 64, at least one (see detect.rs)
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=8,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
BOS, EOS = 49406, 49407
# Two prompts as CLIPTokenizer (openai/clip-vit-large-patch14) makes them: BOS, the words' ids,
# EOS, padded with EOS to 77. "a photo of a cat" and "" (the empty negative prompt).
PROMPT_IDS = [
    [BOS, 320, 1125, 539, 320, 2368, EOS],
    [BOS, EOS],
]
WEIGHT_SEED = 1234
UNET_TIMESTEP = 501
RUN = dict(seed=42, width=64, height=64, steps=6, guidance_scale=7.0)
ODD_RUN = dict(seed=3, width=72, height=64, steps=3, guidance_scale=7.0)


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def bootstrap():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    subprocess.check_call([py, "-m", "pip", "install", "--quiet", *PINS])
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


def padded(ids):
    return ids + [EOS] * (77 - len(ids))


# ---------------------------------------------------------------------------------------------
# diffusers -> LDM names, written from the LDM UNet's numbering: input_blocks.0 is conv_in, then
# per level `layers` blocks of [resnet, attention?] and one downsampler; middle_block is
# [resnet, attention, resnet]; output_blocks mirror the levels with `layers + 1` blocks each,
# the level's upsampler sitting after its attention (or in its place when there is none).

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
       "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def resnet_tail(tail):
    part, rest = tail.split(".", 1)
    return f"{RESNET[part]}.{rest}"


def ldm_unet_key(name, layers, up_has_attn):
    m = re.fullmatch(r"(time_embedding\.linear_[12]|conv_in|conv_norm_out|conv_out)\.(\w+)", name)
    if m:
        return f"{TOP[m[1]]}.{m[2]}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        level, kind, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + level * (layers + 1) + j
        return f"input_blocks.{idx}.0.{resnet_tail(tail)}" if kind == "resnets" \
            else f"input_blocks.{idx}.1.{tail}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", name)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        kind, j, tail = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{resnet_tail(tail)}" if kind == "resnets" \
            else f"middle_block.1.{tail}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        level, kind, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        idx = level * (layers + 1) + j
        return f"output_blocks.{idx}.0.{resnet_tail(tail)}" if kind == "resnets" \
            else f"output_blocks.{idx}.1.{tail}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", name)
    if m:
        level = int(m[1])
        idx = level * (layers + 1) + layers
        return f"output_blocks.{idx}.{2 if up_has_attn[level] else 1}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet tensor {name}")


VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_key(name, levels):
    """The LDM name of a VAE tensor and whether LDM stores it as a 1x1 convolution."""
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(\w+)", name)
    if m:
        return f"{m[1]}.{'norm_out' if m[2] == 'conv_norm_out' else m[2]}.{m[3]}", False
    if re.fullmatch(r"(post_)?quant_conv\.\w+", name):
        return name, False
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)",
                     name)
    if m:
        # The decoder's levels run the other way round in LDM.
        level = int(m[3]) if m[1] == "encoder" else levels - 1 - int(m[3])
        layer = "nin_shortcut" if m[5] == "conv_shortcut" else m[5]
        return f"{m[1]}.{m[2]}.{level}.block.{m[4]}.{layer}.{m[6]}", False
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\.(\w+)",
                     name)
    if m:
        level = int(m[3]) if m[1] == "encoder" else levels - 1 - int(m[3])
        return f"{m[1]}.{m[2]}.{level}.{m[4]}sample.conv.{m[5]}", False
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.(\w+)", name)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}.{m[4]}", False
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(\w+)",
                     name)
    if m:
        conv = m[2] != "group_norm" and m[3] == "weight"
        return f"{m[1]}.mid.attn_1.{VAE_ATTN[m[2]]}.{m[3]}", conv
    raise KeyError(f"no LDM name for VAE tensor {name}")


def to_ldm(unet, vae, text_encoder):
    layers = UNET["layers_per_block"]
    up_has_attn = [t.startswith("CrossAttn") for t in UNET["up_block_types"]]
    ldm = {}
    for name, t in unet.state_dict().items():
        ldm["model.diffusion_model." + ldm_unet_key(name, layers, up_has_attn)] = t
    levels = len(VAE["block_out_channels"])
    for name, t in vae.state_dict().items():
        key, conv = ldm_vae_key(name, levels)
        ldm["first_stage_model." + key] = t[:, :, None, None] if conv else t
    for name, t in text_encoder.state_dict().items():
        ldm["cond_stage_model.transformer." + name] = t
    # Real checkpoints carry CLIP's position ids as a tensor; a loader must ignore it.
    ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
        __import__("torch").arange(77, dtype=__import__("torch").int64)[None]
    assert len(ldm) == len(unet.state_dict()) + len(vae.state_dict()) + len(text_encoder.state_dict()) + 1
    return {k: v.contiguous() for k, v in ldm.items()}


def check_against_diffusers(ldm, unet, vae, text_encoder):
    """diffusers' own converters must give back exactly the tensors the file was made from."""
    import torch
    from diffusers.loaders import single_file_utils as sfu

    def same(name, converted, original, allow_extra=()):
        extra = set(converted) - set(original) - set(allow_extra)
        missing = set(original) - set(converted)
        assert not extra and not missing, f"{name}: extra {sorted(extra)[:5]}, missing {sorted(missing)[:5]}"
        for k, v in original.items():
            assert converted[k].shape == v.shape and torch.equal(converted[k], v), f"{name}: {k} differs"

    same("unet", sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config)), unet.state_dict())
    same("vae", sfu.convert_ldm_vae_checkpoint(ldm, dict(vae.config)), vae.state_dict())
    same("clip", sfu.convert_ldm_clip_checkpoint(ldm), text_encoder.state_dict(),
         allow_extra=["text_model.embeddings.position_ids"])


def build():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(WEIGHT_SEED)
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP))
    # Default init leaves norms at weight 1, bias 0 (a swapped weight and bias would go unseen)
    # and the outputs tiny; jitter every parameter so that each tensor matters.
    with torch.no_grad():
        for module in (unet, vae, text_encoder):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
                p.copy_(p.half().float())
    for m in (unet, vae, text_encoder):
        m.eval()
    return unet, vae, text_encoder


def record(unet, vae, text_encoder):
    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    out = {}
    with torch.no_grad():
        ids = torch.tensor([padded(p) for p in PROMPT_IDS], dtype=torch.int64)
        hidden = text_encoder(ids)[0]
        out["text_ids"] = ids.to(torch.int64)
        out["text_hidden"] = hidden

        g = torch.Generator("cpu").manual_seed(7)
        sample = torch.randn((2, 4, 8, 8), generator=g)
        out["unet_sample"] = sample
        out["unet_out"] = unet(sample, UNET_TIMESTEP, encoder_hidden_states=hidden).sample

        latent = torch.randn((1, 4, 8, 8), generator=g)
        out["vae_latent"] = latent
        out["vae_image"] = vae.decode(latent).sample

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1,
        algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    steps = []

    def keep(pipe_, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return kwargs

    with torch.no_grad():
        image = pipe(prompt_embeds=hidden[0:1], negative_prompt_embeds=hidden[1:2],
                     width=RUN["width"], height=RUN["height"],
                     num_inference_steps=RUN["steps"], guidance_scale=RUN["guidance_scale"],
                     generator=torch.Generator("cpu").manual_seed(RUN["seed"]),
                     output_type="np", callback_on_step_end=keep).images
    out["run_latents"] = torch.cat(steps)
    # The pipeline's PIL conversion: (x * 255).round() of the [0, 1] image.
    out["run_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))

    # A size whose latent (9 x 8) is not a multiple of the UNet's downscale (4): the up path
    # then upsamples to the skip connection's size, as real jobs of width 680 (latent 85) do.
    with torch.no_grad():
        image = pipe(prompt_embeds=hidden[0:1], negative_prompt_embeds=hidden[1:2],
                     width=ODD_RUN["width"], height=ODD_RUN["height"],
                     num_inference_steps=ODD_RUN["steps"], guidance_scale=ODD_RUN["guidance_scale"],
                     generator=torch.Generator("cpu").manual_seed(ODD_RUN["seed"]),
                     output_type="np").images
    out["odd_run_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))
    return out


# ---------------------------------------------------------------------------------------------
# SDXL: a second text encoder (OpenCLIP ViT-bigG, stored in OpenCLIP's own names with fused
# q/k/v and a transposed projection), the UNet's context being both encoders' penultimate hidden
# states side by side, and the pooled projection plus the size/crop "time ids" added to the time
# embedding through `add_embedding` (LDM `label_emb`). SDXL base: blocks (320, 640, 1280),
# transformer depth (0, 2, 10), head size 64, linear projections, context 768 + 1280.
XL_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(1, 1),  # heads: width / 64, at least one (SDXL's head size convention)
    use_linear_projection=True,
    cross_attention_dim=16,  # 8 (CLIP-L) + 8 (bigG)
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 8,
    norm_num_groups=32,
)
XL_VAE = dict(VAE, scaling_factor=0.13025)
XL_CLIP_G = dict(CLIP, hidden_size=8, intermediate_size=16, hidden_act="gelu", projection_dim=8)
# SDXL's second tokenizer pads with "!" (id 0), the first with the end token.
XL_RUN = dict(seed=7, width=64, height=64, steps=5, guidance_scale=5.0)


def openclip_key(name):
    """The OpenCLIP name of a transformers CLIPTextModelWithProjection tensor (q/k/v: fused)."""
    fixed = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias",
             "text_projection.weight": "text_projection"}
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    layer = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.q_proj": "attn.in_proj", "self_attn.k_proj": "attn.in_proj",
             "self_attn.v_proj": "attn.in_proj"}[m[2]]
    sep = "_" if layer == "attn.in_proj" else "."
    return f"transformer.resblocks.{m[1]}.{layer}{sep}{m[3]}"


def to_ldm_xl(unet, vae, te1, te2):
    import torch
    layers = XL_UNET["layers_per_block"]
    up_has_attn = [t.startswith("CrossAttn") for t in XL_UNET["up_block_types"]]
    ldm = {}
    for name, t in unet.state_dict().items():
        m = re.fullmatch(r"add_embedding\.linear_([12])\.(\w+)", name)
        key = f"label_emb.0.{0 if m[1] == '1' else 2}.{m[2]}" if m else \
            ldm_unet_key(name, layers, up_has_attn)
        ldm["model.diffusion_model." + key] = t
    levels = len(XL_VAE["block_out_channels"])
    for name, t in vae.state_dict().items():
        key, conv = ldm_vae_key(name, levels)
        ldm["first_stage_model." + key] = t[:, :, None, None] if conv else t
    for name, t in te1.state_dict().items():
        ldm["conditioner.embedders.0.transformer." + name] = t
    fused = {}
    for name, t in te2.state_dict().items():
        key = "conditioner.embedders.1.model." + openclip_key(name)
        if "in_proj" in key:
            fused.setdefault(key, {})[re.search(r"([qkv])_proj", name)[1]] = t
        else:
            ldm[key] = t.T if key.endswith("text_projection") else t
    for key, parts in fused.items():
        ldm[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    ldm["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6052)
    return {k: v.contiguous() for k, v in ldm.items()}


def check_xl_against_diffusers(ldm, unet, vae, te1, te2):
    import torch
    from diffusers.loaders import single_file_utils as sfu

    def same(name, converted, original):
        assert set(converted) == set(original), \
            f"{name}: {sorted(set(converted) ^ set(original))[:6]}"
        for k, v in original.items():
            assert converted[k].shape == v.shape and torch.equal(converted[k], v), f"{name}: {k}"

    same("unet", sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config)), unet.state_dict())
    same("vae", sfu.convert_ldm_vae_checkpoint(ldm, dict(vae.config)), vae.state_dict())
    clip_l = sfu.convert_ldm_clip_checkpoint(
        {k: v for k, v in ldm.items() if k.startswith("conditioner.embedders.0.")})
    same("clip-l", clip_l, te1.state_dict())
    same("clip-g", sfu.convert_open_clip_checkpoint(te2, ldm, prefix="conditioner.embedders.1.model."),
         te2.state_dict())


def build_xl():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(WEIGHT_SEED + 1)
    unet = UNet2DConditionModel(**XL_UNET)
    vae = AutoencoderKL(**XL_VAE)
    te1 = CLIPTextModel(CLIPTextConfig(**CLIP))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**XL_CLIP_G))
    with torch.no_grad():
        for module in (unet, vae, te1, te2):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
                p.copy_(p.half().float())
            module.eval()
    return unet, vae, te1, te2


def record_xl(unet, vae, te1, te2):
    import numpy as np
    import torch
    from diffusers import (DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           StableDiffusionXLPipeline)

    out = {}
    with torch.no_grad():
        ids1 = torch.tensor([padded(p) for p in PROMPT_IDS], dtype=torch.int64)
        ids2 = torch.tensor([p + [0] * (77 - len(p)) for p in PROMPT_IDS], dtype=torch.int64)
        h1 = te1(ids1, output_hidden_states=True).hidden_states[-2]
        o2 = te2(ids2, output_hidden_states=True)
        context = torch.cat([h1, o2.hidden_states[-2]], dim=-1)
        pooled = o2.text_embeds
        out["xl_ids_1"], out["xl_ids_2"] = ids1, ids2
        out["xl_context"], out["xl_pooled"] = context, pooled

        g = torch.Generator("cpu").manual_seed(9)
        sample = torch.randn((2, 4, 8, 8), generator=g)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2)
        out["xl_unet_sample"], out["xl_time_ids"] = sample, time_ids
        out["xl_unet_out"] = unet(sample, UNET_TIMESTEP, encoder_hidden_states=context,
                                  added_cond_kwargs={"text_embeds": pooled,
                                                     "time_ids": time_ids}).sample

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1,
        algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=scheduler)
    steps = []

    def keep(pipe_, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return kwargs

    with torch.no_grad():
        image = pipe(prompt_embeds=context[0:1], negative_prompt_embeds=context[1:2],
                     pooled_prompt_embeds=pooled[0:1], negative_pooled_prompt_embeds=pooled[1:2],
                     width=XL_RUN["width"], height=XL_RUN["height"],
                     num_inference_steps=XL_RUN["steps"], guidance_scale=XL_RUN["guidance_scale"],
                     generator=torch.Generator("cpu").manual_seed(XL_RUN["seed"]),
                     output_type="np", callback_on_step_end=keep).images
    out["xl_run_latents"] = torch.cat(steps)
    out["xl_run_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))

    # The same job with SDXL's own default sampler: Euler, "leading" spacing, steps offset 1.
    pipe.scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")
    steps.clear()
    with torch.no_grad():
        image = pipe(prompt_embeds=context[0:1], negative_prompt_embeds=context[1:2],
                     pooled_prompt_embeds=pooled[0:1], negative_pooled_prompt_embeds=pooled[1:2],
                     width=XL_RUN["width"], height=XL_RUN["height"],
                     num_inference_steps=XL_RUN["steps"], guidance_scale=XL_RUN["guidance_scale"],
                     generator=torch.Generator("cpu").manual_seed(XL_RUN["seed"]),
                     output_type="np", callback_on_step_end=keep).images
    out["xl_euler_latents"] = torch.cat(steps)
    out["xl_euler_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))
    return out


# ---------------------------------------------------------------------------------------------
# A kohya-style LoRA for the tiny SD 1.5 (the network's LoRAs are civitai/kohya files): keys
# `lora_unet_<diffusers module path with _>` / `lora_te_<transformers path with _>`, each with
# `.lora_down.weight`, `.lora_up.weight` and `.alpha`; linear layers, 1x1 and 3x3 convolutions
# (LoCon). diffusers loads it (its kohya converter and peft) and fuses it at the network's
# `default_weight` as the scale.
LORA_RANK = 2
LORA_ALPHA = 1.0
LORA_SCALE = 0.8
LORA_UNET = [
    "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.2.attentions.0.transformer_blocks.0.ff.net.2",
    "down_blocks.2.attentions.1.proj_in",
    "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_v",
    "mid_block.attentions.0.proj_out",
    "down_blocks.0.resnets.1.conv1",
    "up_blocks.1.resnets.0.conv2",
]
LORA_TE = [
    "text_model.encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.1.self_attn.out_proj",
    "text_model.encoder.layers.1.mlp.fc1",
]


def make_lora(unet, text_encoder, seed=99, targets=None):
    import torch
    g = torch.Generator("cpu").manual_seed(seed)
    lora = {}
    if targets is None:
        targets = (("lora_unet_", unet, LORA_UNET), ("lora_te_", text_encoder, LORA_TE))
    for prefix, model, paths in targets:
        modules = dict(model.named_modules())
        for path in paths:
            w = modules[path].weight
            name = prefix + path.replace(".", "_")
            if w.ndim == 4:
                down = torch.randn((LORA_RANK, w.shape[1], w.shape[2], w.shape[3]), generator=g)
                up = torch.randn((w.shape[0], LORA_RANK, 1, 1), generator=g)
            else:
                down = torch.randn((LORA_RANK, w.shape[1]), generator=g)
                up = torch.randn((w.shape[0], LORA_RANK), generator=g)
            lora[name + ".lora_down.weight"] = (down * 0.2).half()
            lora[name + ".lora_up.weight"] = (up * 0.2).half()
            lora[name + ".alpha"] = torch.tensor(LORA_ALPHA).half()
    return lora


def record_lora(unet, vae, text_encoder, lora_path):
    import copy
    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    base_unet, base_te = unet, text_encoder
    unet, text_encoder = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1,
        algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(os.path.dirname(lora_path), weight_name=os.path.basename(lora_path))
    pipe.fuse_lora(lora_scale=LORA_SCALE)
    pipe.unload_lora_weights()  # the fused weights stay
    # Every LoRA module must have been fused by diffusers as W + scale * alpha / rank * up @ down
    # (nothing silently skipped), or the fixture would not test what it claims.
    lora = make_lora(base_unet, base_te)
    for prefix, base, fused, paths in (("lora_unet_", base_unet, unet, LORA_UNET),
                                       ("lora_te_", base_te, text_encoder, LORA_TE)):
        for path in paths:
            name = prefix + path.replace(".", "_")
            down = lora[name + ".lora_down.weight"].float()
            up = lora[name + ".lora_up.weight"].float()
            w0 = dict(base.named_modules())[path].weight
            w1 = dict(fused.named_modules())[path].weight
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
            want = w0 + LORA_SCALE * LORA_ALPHA / LORA_RANK * delta
            assert torch.allclose(w1, want, atol=1e-5), f"diffusers did not fuse {name}"
    out = {}
    with torch.no_grad():
        ids = torch.tensor([padded(p) for p in PROMPT_IDS], dtype=torch.int64)
        hidden = text_encoder(ids)[0]
        out["lora_text_hidden"] = hidden
        g = torch.Generator("cpu").manual_seed(7)
        sample = torch.randn((2, 4, 8, 8), generator=g)
        out["lora_unet_out"] = unet(sample, UNET_TIMESTEP, encoder_hidden_states=hidden).sample
        image = pipe(prompt_embeds=hidden[0:1], negative_prompt_embeds=hidden[1:2],
                     width=RUN["width"], height=RUN["height"],
                     num_inference_steps=RUN["steps"], guidance_scale=RUN["guidance_scale"],
                     generator=torch.Generator("cpu").manual_seed(RUN["seed"]),
                     output_type="np").images
    out["lora_run_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))
    return out


# SDXL's kohya LoRA: `lora_te1_` / `lora_te2_` for the two text encoders (bigG's q/k/v are
# fused in the checkpoint, so its adapters land on slices of one stored tensor).
XL_LORA_UNET = [
    "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v",
    "down_blocks.1.attentions.0.proj_in",
    "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj",
    "up_blocks.1.resnets.1.conv1",
]
# (diffusers recognises a kohya text-encoder LoRA by an `out_proj` adapter, so each has one.)
XL_LORA_TE1 = ["text_model.encoder.layers.0.self_attn.v_proj",
               "text_model.encoder.layers.0.self_attn.out_proj"]
XL_LORA_TE2 = [
    "text_model.encoder.layers.1.self_attn.k_proj",
    "text_model.encoder.layers.1.self_attn.out_proj",
    "text_model.encoder.layers.0.mlp.fc2",
]


def xl_lora_targets(unet, te1, te2):
    return (("lora_unet_", unet, XL_LORA_UNET), ("lora_te1_", te1, XL_LORA_TE1),
            ("lora_te2_", te2, XL_LORA_TE2))


def record_xl_lora(unet, vae, te1, te2, lora_path):
    import copy
    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline

    base = xl_lora_targets(unet, te1, te2)
    unet, te1, te2 = copy.deepcopy(unet), copy.deepcopy(te1), copy.deepcopy(te2)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1,
        algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=scheduler)
    pipe.load_lora_weights(os.path.dirname(lora_path), weight_name=os.path.basename(lora_path))
    pipe.fuse_lora(lora_scale=LORA_SCALE)
    pipe.unload_lora_weights()
    lora = make_lora(None, None, seed=98, targets=base)
    for (prefix, b, paths), (_, f, _) in zip(base, xl_lora_targets(unet, te1, te2)):
        for path in paths:
            name = prefix + path.replace(".", "_")
            down = lora[name + ".lora_down.weight"].float()
            up = lora[name + ".lora_up.weight"].float()
            w0 = dict(b.named_modules())[path].weight
            w1 = dict(f.named_modules())[path].weight
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
            want = w0 + LORA_SCALE * LORA_ALPHA / LORA_RANK * delta
            assert torch.allclose(w1, want, atol=1e-5), f"diffusers did not fuse {name}"
    out = {}
    with torch.no_grad():
        ids1 = torch.tensor([padded(p) for p in PROMPT_IDS], dtype=torch.int64)
        ids2 = torch.tensor([p + [0] * (77 - len(p)) for p in PROMPT_IDS], dtype=torch.int64)
        h1 = te1(ids1, output_hidden_states=True).hidden_states[-2]
        o2 = te2(ids2, output_hidden_states=True)
        context = torch.cat([h1, o2.hidden_states[-2]], dim=-1)
        pooled = o2.text_embeds
        out["xl_lora_context"], out["xl_lora_pooled"] = context, pooled
        image = pipe(prompt_embeds=context[0:1], negative_prompt_embeds=context[1:2],
                     pooled_prompt_embeds=pooled[0:1], negative_pooled_prompt_embeds=pooled[1:2],
                     width=XL_RUN["width"], height=XL_RUN["height"],
                     num_inference_steps=XL_RUN["steps"], guidance_scale=XL_RUN["guidance_scale"],
                     generator=torch.Generator("cpu").manual_seed(XL_RUN["seed"]),
                     output_type="np").images
    out["xl_lora_run_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))
    return out


def make_vae_override():
    """A second VAE for the tiny SD 1.5, as the registry's VAE files are stored: LDM names with
    no `first_stage_model.` prefix (vae-ft-mse-840000-ema-pruned and the like)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(WEIGHT_SEED + 2)
    vae = AutoencoderKL(**VAE)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
            p.copy_(p.half().float())
    vae.eval()
    levels = len(VAE["block_out_channels"])
    ldm = {}
    for name, t in vae.state_dict().items():
        key, conv = ldm_vae_key(name, levels)
        ldm[key] = (t[:, :, None, None] if conv else t).contiguous()
    from diffusers.loaders import single_file_utils as sfu
    back = sfu.convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert set(back) == set(vae.state_dict())
    assert all(torch.equal(back[k], v) for k, v in vae.state_dict().items())
    return vae, ldm


def main():
    if not in_venv():
        bootstrap()
    import torch
    from safetensors.torch import save_file

    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    unet, vae, text_encoder = build()

    ldm = to_ldm(unet, vae, text_encoder)
    check_against_diffusers(ldm, unet, vae, text_encoder)
    # One metadata key: safetensors writes a map's keys in no fixed order.
    meta = {"format": "pt"}
    ldm16 = {k: (v.half() if v.is_floating_point() else v) for k, v in ldm.items()}
    save_file(ldm16, os.path.join(OUT, "tiny-sd15-fp16.safetensors"), metadata=meta)

    folder = os.path.join(OUT, "tiny-sd15-diffusers")
    for sub, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        module.to(torch.float16).save_pretrained(os.path.join(folder, sub), safe_serialization=True)
        module.to(torch.float32)

    out = record(unet, vae, text_encoder)
    lora_path = os.path.join(OUT, "tiny-sd15-lora.safetensors")
    save_file(make_lora(unet, text_encoder), lora_path, metadata=meta)
    out.update(record_lora(unet, vae, text_encoder, lora_path))
    vae2, vae2_ldm = make_vae_override()
    save_file({k: v.half() for k, v in vae2_ldm.items()},
              os.path.join(OUT, "tiny-vae-override.safetensors"), metadata=meta)
    with torch.no_grad():
        out["vae2_image"] = vae2.decode(out["vae_latent"]).sample

    xl = build_xl()
    ldm_xl = to_ldm_xl(*xl)
    check_xl_against_diffusers(ldm_xl, *xl)
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in ldm_xl.items()},
              os.path.join(OUT, "tiny-sdxl-fp16.safetensors"), metadata=meta)
    out.update(record_xl(*xl))
    xl_lora_path = os.path.join(OUT, "tiny-sdxl-lora.safetensors")
    save_file(make_lora(None, None, seed=98, targets=xl_lora_targets(xl[0], xl[2], xl[3])),
              xl_lora_path, metadata=meta)
    out.update(record_xl_lora(*xl, xl_lora_path))
    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"prompt_ids": PROMPT_IDS, "unet_timestep": UNET_TIMESTEP, "run": RUN,
                   "odd_run": ODD_RUN, "xl_run": XL_RUN, "lora_scale": LORA_SCALE,
                   "unet": {k: v for k, v in UNET.items()}, "vae": VAE, "clip": CLIP,
                   "versions": {"torch": torch.__version__,
                                "diffusers": __import__("diffusers").__version__,
                                "transformers": __import__("transformers").__version__}},
                  f, indent=1)
        f.write("\n")
    sizes = {n: os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT)
             if os.path.isfile(os.path.join(OUT, n))}
    print(json.dumps(sizes, indent=1))
    print("unet params", sum(p.numel() for p in unet.parameters()),
          "vae", sum(p.numel() for p in vae.parameters()),
          "clip", sum(p.numel() for p in text_encoder.parameters()))


if __name__ == "__main__":
    main()
