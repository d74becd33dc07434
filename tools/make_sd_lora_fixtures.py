#!/usr/bin/env python3
"""LoRAs in diffusers' own key style for the tiny SD 1.5 and SDXL models, and what diffusers
makes with them.

tools/make_sd_models.py covers kohya files (`lora_unet_*`, `lora_te*_*`). Files trained with
diffusers' scripts are written by `save_lora_weights` from peft adapters: dotted module paths
under `unet.`, `text_encoder.` and `text_encoder_2.`, with `.lora_A.weight` (down) and
`.lora_B.weight` (up), and no alphas. This script puts seeded random peft adapters (rank 2, on
attention projections, feed-forward layers, 1x1 and 3x3 convolutions and the text encoders) on
the tiny models of make_sd_models.py (rebuilt from their seeds, checked against the committed
files), saves them with `save_lora_weights`, loads each file back into fresh models with
`load_lora_weights` + `fuse_lora(lora_scale=0.8)` (the network's `default_weight` as the scale,
as the reference miner passes it), asserts that every adapter was fused as
`W + 0.8 * up @ down`, and records the seeded run of make_sd_models.py on the fused models.
It also writes the SD 1.5 file renamed to the older style (UNet `.lora.down.weight` /
`.lora.up.weight`, text encoder `.lora_linear_layer.down.weight` / `.up.weight`) and asserts that diffusers fuses it into the same weights.

    python3 tools/make_sd_lora_fixtures.py

Writes to heurist-inference/tests/fixtures/sd/: tiny-sd15-lora-peft.safetensors,
tiny-sd15-lora-diffusers-old.safetensors, tiny-sdxl-lora-peft.safetensors and
lora_peft_reference.safetensors (`sd15_run_image`, `xl_run_image`: u8 [64, 64, 3]).
"""
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd_models as sd  # noqa: E402

RANK = 2
SCALE = 0.8
SD15_UNET = [
    "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_v",
    "down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.2.attentions.1.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.2.attentions.0.proj_out",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q",
    "mid_block.attentions.0.proj_in",
    "down_blocks.1.resnets.0.conv2",
    "up_blocks.2.resnets.2.conv1",
]
SD15_TE = ["text_model.encoder.layers.0.self_attn.v_proj",
           "text_model.encoder.layers.1.self_attn.q_proj",
           "text_model.encoder.layers.0.mlp.fc2"]
XL_UNET = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
    "up_blocks.0.attentions.0.proj_out",
    "up_blocks.0.attentions.1.transformer_blocks.1.ff.net.2",
    "down_blocks.0.resnets.0.conv1",
]
XL_TE1 = ["text_model.encoder.layers.1.self_attn.k_proj"]
XL_TE2 = ["text_model.encoder.layers.0.self_attn.q_proj",
          "text_model.encoder.layers.1.mlp.fc1"]


def add_adapters(model, targets, seed):
    """Seeded random peft adapters (peft leaves lora_B at zero; these are not), f16 values."""
    import torch
    from peft import LoraConfig
    from peft import inject_adapter_in_model

    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=False)
    model = inject_adapter_in_model(config, model)
    g = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_((torch.randn(p.shape, generator=g) * 0.2).half().float())
    return model


def fused_as_expected(base, fused, adapters, prefix, targets):
    import torch
    for path in targets:
        down = adapters[f"{prefix}{path}.lora_A.weight"].float()
        up = adapters[f"{prefix}{path}.lora_B.weight"].float()
        w0 = dict(base.named_modules())[path].weight
        w1 = dict(fused.named_modules())[path].weight
        want = w0 + SCALE * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
        assert torch.allclose(w1, want, atol=1e-5), f"diffusers did not fuse {prefix}{path}"


def scheduler():
    from diffusers import DPMSolverMultistepScheduler
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1,
        algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)


def sd15(out):
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    unet, vae, te = sd.build()
    committed = load_file(os.path.join(sd.OUT, "tiny-sd15-fp16.safetensors"))
    ldm = sd.to_ldm(unet, vae, te)
    assert all(torch.equal(committed[k].to(v.dtype), v) for k, v in ldm.items())

    trained_unet = add_adapters(copy.deepcopy(unet), SD15_UNET, 11)
    trained_te = add_adapters(copy.deepcopy(te), SD15_TE, 12)
    path = os.path.join(sd.OUT, "tiny-sd15-lora-peft.safetensors")
    StableDiffusionPipeline.save_lora_weights(
        sd.OUT, unet_lora_layers=get_peft_model_state_dict(trained_unet),
        text_encoder_lora_layers=get_peft_model_state_dict(trained_te),
        weight_name=os.path.basename(path), safe_serialization=True)
    adapters = load_file(path)
    assert all(k.startswith(("unet.", "text_encoder.")) for k in adapters), list(adapters)[:3]
    assert not any("alpha" in k for k in adapters)
    # The UNet's LoRACompatible layers said `.lora.down`; transformers' patched text-encoder
    # layers said `.lora_linear_layer.down`.
    def old_name(k):
        layer = ".lora." if k.startswith("unet.") else ".lora_linear_layer."
        return k.replace(".lora_A.weight", f"{layer}down.weight").replace(
            ".lora_B.weight", f"{layer}up.weight")
    old = {old_name(k): v for k, v in adapters.items()}
    old_path = os.path.join(sd.OUT, "tiny-sd15-lora-diffusers-old.safetensors")
    save_file(old, old_path, metadata={"format": "pt"})

    def fuse(file):
        f_unet, f_te = copy.deepcopy(unet), copy.deepcopy(te)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=f_te, tokenizer=None, unet=f_unet,
                                       scheduler=scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.load_lora_weights(sd.OUT, weight_name=os.path.basename(file))
        pipe.fuse_lora(lora_scale=SCALE)
        pipe.unload_lora_weights()
        fused_as_expected(unet, f_unet, adapters, "unet.", SD15_UNET)
        fused_as_expected(te, f_te, adapters, "text_encoder.", SD15_TE)
        return pipe

    pipe = fuse(path)
    try:
        fuse(old_path)
        print("diffusers fuses the old-style file identically")
    except Exception as e:  # noqa: BLE001 - record which diffusers refuses it
        raise SystemExit(f"diffusers refused the old-style file: {e}")
    with torch.no_grad():
        ids = torch.tensor([sd.padded(p) for p in sd.PROMPT_IDS], dtype=torch.int64)
        hidden = pipe.text_encoder(ids)[0]
        run = sd.RUN
        image = pipe(prompt_embeds=hidden[0:1], negative_prompt_embeds=hidden[1:2],
                     width=run["width"], height=run["height"],
                     num_inference_steps=run["steps"], guidance_scale=run["guidance_scale"],
                     generator=torch.Generator("cpu").manual_seed(run["seed"]),
                     output_type="np").images
    out["sd15_run_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))


def sdxl(out):
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    unet, vae, te1, te2 = sd.build_xl()
    committed = load_file(os.path.join(sd.OUT, "tiny-sdxl-fp16.safetensors"))
    ldm = sd.to_ldm_xl(unet, vae, te1, te2)
    # (OpenCLIP's unused `logit_scale` is the one tensor not rounded to f16 before saving.)
    assert all(torch.equal(committed[k].to(v.dtype), v) for k, v in ldm.items()
               if not k.endswith("logit_scale"))

    path = os.path.join(sd.OUT, "tiny-sdxl-lora-peft.safetensors")
    StableDiffusionXLPipeline.save_lora_weights(
        sd.OUT,
        unet_lora_layers=get_peft_model_state_dict(add_adapters(copy.deepcopy(unet), XL_UNET, 21)),
        text_encoder_lora_layers=get_peft_model_state_dict(
            add_adapters(copy.deepcopy(te1), XL_TE1, 22)),
        text_encoder_2_lora_layers=get_peft_model_state_dict(
            add_adapters(copy.deepcopy(te2), XL_TE2, 23)),
        weight_name=os.path.basename(path), safe_serialization=True)
    adapters = load_file(path)
    f_unet, f_te1, f_te2 = copy.deepcopy(unet), copy.deepcopy(te1), copy.deepcopy(te2)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=f_te1, text_encoder_2=f_te2,
                                     tokenizer=None, tokenizer_2=None, unet=f_unet,
                                     scheduler=scheduler())
    pipe.load_lora_weights(sd.OUT, weight_name=os.path.basename(path))
    pipe.fuse_lora(lora_scale=SCALE)
    pipe.unload_lora_weights()
    fused_as_expected(unet, f_unet, adapters, "unet.", XL_UNET)
    fused_as_expected(te1, f_te1, adapters, "text_encoder.", XL_TE1)
    fused_as_expected(te2, f_te2, adapters, "text_encoder_2.", XL_TE2)
    with torch.no_grad():
        ids1 = torch.tensor([sd.padded(p) for p in sd.PROMPT_IDS], dtype=torch.int64)
        ids2 = torch.tensor([p + [0] * (77 - len(p)) for p in sd.PROMPT_IDS], dtype=torch.int64)
        h1 = f_te1(ids1, output_hidden_states=True).hidden_states[-2]
        o2 = f_te2(ids2, output_hidden_states=True)
        context = torch.cat([h1, o2.hidden_states[-2]], dim=-1)
        pooled = o2.text_embeds
        run = sd.XL_RUN
        image = pipe(prompt_embeds=context[0:1], negative_prompt_embeds=context[1:2],
                     pooled_prompt_embeds=pooled[0:1], negative_pooled_prompt_embeds=pooled[1:2],
                     width=run["width"], height=run["height"],
                     num_inference_steps=run["steps"], guidance_scale=run["guidance_scale"],
                     generator=torch.Generator("cpu").manual_seed(run["seed"]),
                     output_type="np").images
    out["xl_run_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))


def main():
    if not sd.in_venv():
        sd.bootstrap()
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    out = {}
    sd15(out)
    sdxl(out)
    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(sd.OUT, "lora_peft_reference.safetensors"))
    for name in ("tiny-sd15-lora-peft.safetensors", "tiny-sd15-lora-diffusers-old.safetensors",
                 "tiny-sdxl-lora-peft.safetensors", "lora_peft_reference.safetensors"):
        print(name, os.path.getsize(os.path.join(sd.OUT, name)))


if __name__ == "__main__":
    main()
