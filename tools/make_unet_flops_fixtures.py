#!/usr/bin/env python3
"""FLOPs of one UNet evaluation of SD 1.5 and SDXL, counted by PyTorch, for heurist-verify.

heurist-verify flags a claimed image latency that is shorter than the job's FLOPs at the
GPU's peak FP16 rate. Its FLOPs model is a per-pixel rate per UNet evaluation; this script
measures the real count independently, so the Rust tests can check that the rate is a lower
bound at every size measured (a claim is never called impossible because the model
over-counted) and not a loose one.

How: diffusers' UNet2DConditionModel is built from the published configs of
runwayml/stable-diffusion-v1-5 (unet/config.json) and stabilityai/stable-diffusion-xl-base-1.0
(unet/config.json), on the meta device (no weights, no download), and one forward pass of
batch 1 is run under torch.utils.flop_counter.FlopCounterMode, which counts 2 FLOPs per
multiply-add of every matmul, convolution and attention product (elementwise ops, norms and
softmax are not counted, which only lowers the count). Sizes are the image's, in pixels; the
latent is 1/8 of each side.

Run: tools/.venv-image/bin/python tools/make_unet_flops_fixtures.py
Writes heurist-verify/tests/fixtures/torch-flop-counter/unet_flops.json.
"""

import json
import pathlib

import diffusers
import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

OUT = pathlib.Path(__file__).resolve().parent.parent / "heurist-verify/tests/fixtures/torch-flop-counter/unet_flops.json"

# unet/config.json of runwayml/stable-diffusion-v1-5 (the fields that differ from diffusers'
# defaults, which are otherwise that model's).
SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)

# unet/config.json of stabilityai/stable-diffusion-xl-base-1.0.
SDXL = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

# (width, height) in pixels: the registry's defaults and limits, and the smallest sizes a
# job may ask for.
SIZES = {
    "sd15": [(256, 256), (512, 512), (512, 768), (768, 768), (1024, 1024)],
    "sdxl": [(512, 512), (680, 1024), (1024, 1024)],
}


def count(config, family, width, height):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        sample = torch.zeros(1, 4, height // 8, width // 8)
        text = torch.zeros(1, 77, config["cross_attention_dim"])
        kwargs = {}
        if family == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)}
        params = sum(p.numel() for p in unet.parameters())
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            unet(sample, torch.tensor([999]), encoder_hidden_states=text, **kwargs)
    return params, counter.get_total_flops()


def main():
    rows = []
    for family, config in [("sd15", SD15), ("sdxl", SDXL)]:
        for width, height in SIZES[family]:
            params, flops = count(config, family, width, height)
            rows.append(
                {"family": family, "width": width, "height": height, "unet_params": params, "flops": flops,
                 "flops_per_pixel": flops / (width * height)}
            )
            print(f"{family} {width}x{height}: {flops / 1e9:.1f} GFLOPs, {flops / (width * height):.0f} per pixel")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "tool": f"torch {torch.__version__} FlopCounterMode, diffusers {diffusers.__version__}",
        "what": "FLOPs of one UNet2DConditionModel forward pass, batch 1, 77 text tokens, meta device",
        "rows": rows,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
