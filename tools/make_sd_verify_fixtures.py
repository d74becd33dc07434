#!/usr/bin/env python3
"""Honest image results made by diffusers, to calibrate heurist-verify's image check.

The verifier re-runs an image job with heurist-inference and compares with the miner's image;
the network's miners run diffusers (on GPUs, in f16). So the bars of the check must hold for
images an honest *diffusers* miner makes, not only for the verifier's own re-runs. This script
runs N seeded jobs on the tiny SD 1.5 model of tools/make_sd_models.py (rebuilt here from its
seed and checked against the committed file) with StableDiffusionPipeline and the network's
sampler (DPMSolverMultistepScheduler, sde-dpmsolver++, Karras sigmas), in f32 and with the UNet
and text encoder in a 16-bit float (what a GPU miner runs; the CPU runs f16 where torch has the
kernels, else bf16, which rounds more coarsely and so bounds f16 from above).

Prompts are token ids (BOS, random ids, EOS, padded with EOS to 77), so that the Rust side feeds
the same ids without a tokenizer (`PromptEncoding::TokenIds`).

    python3 tools/make_sd_verify_fixtures.py

Writes heurist-inference/tests/fixtures/sd/verify_honest.safetensors: `ids` (i64 [N, 77]),
`neg_ids` (i64 [N, 77]), `seed`, `steps` (i64 [N]), `guidance` (f32 [N]), `image_f32` and
`image_half` (u8 [N, 64, 64, 3], as the pipeline's PIL output rounds them), and metadata
`half_dtype`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd_models as sd  # noqa: E402

N = 48


def jobs():
    import random
    rng = random.Random(2026)
    out = []
    for _ in range(N):
        words = [rng.randrange(300, 40000) for _ in range(rng.randrange(2, 24))]
        neg = [rng.randrange(300, 40000) for _ in range(rng.randrange(0, 6))]
        out.append(dict(ids=sd.padded([sd.BOS, *words, sd.EOS]),
                        neg_ids=sd.padded([sd.BOS, *neg, sd.EOS]),
                        seed=rng.randrange(0, 1 << 53), steps=rng.randrange(6, 15),
                        guidance=rng.choice([5.0, 6.0, 7.0, 7.5, 8.0])))
    return out


def main():
    if not sd.in_venv():
        sd.bootstrap()
    import copy

    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(2)
    unet, vae, text_encoder = sd.build()
    # The rebuilt model must be the committed one, or the fixture would calibrate another model.
    ldm = sd.to_ldm(unet, vae, text_encoder)
    committed = load_file(os.path.join(sd.OUT, "tiny-sd15-fp16.safetensors"))
    assert set(committed) == set(ldm)
    assert all(torch.equal(committed[k].to(v.dtype), v) for k, v in ldm.items())

    def pipeline(unet, text_encoder):
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
            beta_schedule="scaled_linear", steps_offset=1,
            algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None,
                                       unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)

    def run(pipe, job, dtype):
        with torch.no_grad():
            ids = torch.tensor([job["ids"], job["neg_ids"]], dtype=torch.int64)
            hidden = pipe.text_encoder(ids)[0]
            # A 16-bit miner's UNet sees 16-bit embeddings; the VAE decodes in f32 (upcast).
            lat = pipe(prompt_embeds=hidden[0:1], negative_prompt_embeds=hidden[1:2],
                       width=64, height=64, num_inference_steps=job["steps"],
                       guidance_scale=job["guidance"],
                       generator=torch.Generator("cpu").manual_seed(job["seed"]),
                       output_type="latent").images
            image = vae.decode(lat.float() / vae.config.scaling_factor).sample
            image = (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        return torch.from_numpy((image * 255).round().astype(np.uint8))

    all_jobs = jobs()
    f32 = pipeline(unet, text_encoder)
    image_f32 = torch.stack([run(f32, j, torch.float32) for j in all_jobs])

    half_dtype = None
    for dtype in (torch.float16, torch.bfloat16):
        try:
            pipe = pipeline(copy.deepcopy(unet).to(dtype), copy.deepcopy(text_encoder).to(dtype))
            image_half = torch.stack([run(pipe, j, dtype) for j in all_jobs])
            half_dtype = str(dtype).removeprefix("torch.")
            break
        except RuntimeError as e:  # a kernel torch's CPU lacks in this dtype
            print(f"{dtype}: {e}; trying the next", file=sys.stderr)
    assert half_dtype is not None

    out = {
        "ids": torch.tensor([j["ids"] for j in all_jobs], dtype=torch.int64),
        "neg_ids": torch.tensor([j["neg_ids"] for j in all_jobs], dtype=torch.int64),
        "seed": torch.tensor([j["seed"] for j in all_jobs], dtype=torch.int64),
        "steps": torch.tensor([j["steps"] for j in all_jobs], dtype=torch.int64),
        "guidance": torch.tensor([j["guidance"] for j in all_jobs], dtype=torch.float32),
        "image_f32": image_f32,
        "image_half": image_half,
    }
    path = os.path.join(sd.OUT, "verify_honest.safetensors")
    save_file(out, path, metadata={"half_dtype": half_dtype, "torch": torch.__version__,
                                   "diffusers": __import__("diffusers").__version__})
    diff = (image_f32.int() - image_half.int()).abs().float()
    print(path, os.path.getsize(path), "bytes; half dtype", half_dtype,
          "f32 vs half mean |diff|", diff.mean().item(), "max", diff.max().item())


if __name__ == "__main__":
    main()
