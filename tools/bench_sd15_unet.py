#!/usr/bin/env python3
"""The torch / diffusers side of benches/benches/image_sd15.rs: one SD 1.5 UNet step on the CPU.

Builds diffusers' UNet2DConditionModel at Stable Diffusion 1.5's configuration (blocks 320, 640,
1280, 1280; 8 heads; context 768) with seeded random weights, in f32 on the CPU with
`torch.set_num_threads(--threads)`, and times `unet(sample, t, context)` for a batch of 2 (the
classifier-free-guidance batch) at a 64x64 latent (a 512x512 image) with 77 context tokens.
Prints one JSON line: {"unet_step_s": median seconds, "steps_s": [...], "threads", "torch",
"diffusers", "config"}.

--save-diffusers DIR also writes the random model, with an SD 1.5-shaped VAE and CLIP ViT-L text
encoder, as a diffusers-layout folder of f16 safetensors (unet/, vae/, text_encoder/; about 2 GB)
for the Rust side to load, so that both sides time the same weights.

--tiny uses tools/make_sd_models.py's tiny configuration instead (an 8x8 latent, context 8): a
smoke run of the bench plumbing, not a measurement.

Runs in tools/.venv-image (made by tools/make_sd_models.py); exits 3 when it is absent.
"""
import argparse
import json
import os
import statistics
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(TOOLS, ".venv-image")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
    scaling_factor=0.18215,
)
SD15_CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--save-diffusers", metavar="DIR")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if not in_venv():
        py = os.path.join(VENV, "bin", "python")
        if not os.path.exists(py):
            print(f"{py} is missing (make it with tools/make_sd_models.py)", file=sys.stderr)
            sys.exit(3)
        os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])

    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.tiny:
        sys.path.insert(0, TOOLS)
        import make_sd_models as tiny

        unet_cfg, vae_cfg, clip_cfg = tiny.UNET, tiny.VAE, tiny.CLIP
    else:
        unet_cfg, vae_cfg, clip_cfg = SD15_UNET, SD15_VAE, SD15_CLIP
    unet = UNet2DConditionModel(**unet_cfg).eval()
    if args.save_diffusers:
        vae = AutoencoderKL(**vae_cfg).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**clip_cfg)).eval()
        for sub, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
            module.to(torch.float16).save_pretrained(
                os.path.join(args.save_diffusers, sub), safe_serialization=True)
            module.to(torch.float32)

    side = unet_cfg["sample_size"]
    g = torch.Generator().manual_seed(1)
    sample = torch.randn((2, 4, side, side), generator=g)
    context = torch.randn((2, 77, unet_cfg["cross_attention_dim"]), generator=g)
    times = []
    with torch.no_grad():
        unet(sample, 500, encoder_hidden_states=context)  # warm-up
        for _ in range(args.iters):
            start = time.perf_counter()
            unet(sample, 500, encoder_hidden_states=context)
            times.append(time.perf_counter() - start)
    print(json.dumps({
        "unet_step_s": statistics.median(times), "steps_s": times, "threads": args.threads,
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "config": "tiny" if args.tiny else "sd15",
    }))


if __name__ == "__main__":
    main()
