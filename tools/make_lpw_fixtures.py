#!/usr/bin/env python3
"""Record the reference miner's long-prompt-weighting pipelines on the tiny SD models.

heurist-inference's image engine weights and chunks prompts as the reference SD miner
(heurist-network/miner-release) does, through its vendored community pipelines
`vendor/lpw_stable_diffusion.py` (StableDiffusionLongPromptWeightingPipeline, SD 1.5) and
`vendor/lpw_stable_diffusion_xl.py` (StableDiffusionXLLongPromptWeightingPipeline, SDXL). This
script runs those pipelines, imported at run time from a checkout or mirror of the miner (never
copied here), on the tiny random-weight models of tools/make_sd_models.py (rebuilt in memory from
the same seeds and checked equal to the committed single files), with the real CLIP tokenizer of
tools/make_clip_fixtures.py, and records:
  - the prompt embeddings the pipelines condition on (`get_weighted_text_embeddings` /
    `get_weighted_text_embeddings_sdxl`) for a weighted prompt of more than 77 tokens with nested
    weights, and a weighted negative prompt;
  - the latents after each step and the PIL image of a short seeded run of the whole pipeline
    (the miner's call: prompt, negative_prompt, size, steps, guidance, torch.Generator seed).

    python3 tools/make_lpw_fixtures.py --miner-repo PATH [--commit REV]

Re-runs itself in tools/.venv-image (torch 2.4.0, diffusers 0.30.2, transformers 4.44.2, the
miner's pins). Writes heurist-inference/tests/fixtures/sd/lpw.safetensors and lpw.json; it does
not touch the other fixtures.
"""
import argparse
import json
import os
import sys
import tempfile

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
VENV = os.path.join(TOOLS, ".venv-image")
OUT = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "sd")

sys.path.insert(0, TOOLS)
import make_clip_fixtures as clip_fixtures  # noqa: E402
import make_sd_models as sd_models  # noqa: E402

# More than 77 tokens (two chunks for SD 1.5, two for SDXL), nested and explicit weights, an
# escaped bracket, a de-emphasis; the negative prompt weighted and short.
PROMPT = (
    "a breathtaking ((panoramic view:1.3) of an ancient (mountain monastery:0.8)) at dawn, "
    "golden light spilling over terraced rice fields, [mist] curling around stone stairways, "
    "prayer flags fluttering in the wind, a lone monk in (saffron robes:1.5) carrying a lantern, "
    "intricate wooden carvings on the gates, distant snow-capped peaks, volumetric fog, "
    "cinematic composition, ultra detailed, 8k resolution, shot on a medium format camera, "
    "award-winning travel photography, \\(rich colour grading\\), soft shadows, (((masterpiece)))"
)
NEG_PROMPT = "(blurry:1.4), lowres, [[watermark]], text"
SD15_RUN = dict(seed=11, width=64, height=64, steps=4, guidance_scale=7.0)
SDXL_RUN = dict(seed=12, width=64, height=64, steps=4, guidance_scale=5.0)


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def check_same_as_file(ldm, name):
    """The rebuilt model is the committed single file (stored in f16)."""
    from safetensors.torch import load_file

    saved = load_file(os.path.join(OUT, name))
    assert set(saved) == set(ldm), f"{name}: key sets differ"
    for k, v in ldm.items():
        v = v.half() if v.is_floating_point() else v
        assert saved[k].dtype == v.dtype and saved[k].equal(v), f"{name}: {k} differs"


def dpm_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1,
        algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)


def euler_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")


def record_sd15(lpw15, tok1):
    import numpy as np
    import torch

    unet, vae, text_encoder = sd_models.build()
    check_same_as_file(sd_models.to_ldm(unet, vae, text_encoder), "tiny-sd15-fp16.safetensors")
    pipe = lpw15.StableDiffusionLongPromptWeightingPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok1, unet=unet, scheduler=dpm_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = {}
    with torch.no_grad():
        text, uncond = lpw15.get_weighted_text_embeddings(
            pipe, PROMPT, uncond_prompt=NEG_PROMPT, max_embeddings_multiples=3)
    out["lpw_sd15_context"] = torch.cat([uncond, text])
    steps = []
    with torch.no_grad():
        image = pipe(PROMPT, negative_prompt=NEG_PROMPT, height=SD15_RUN["height"],
                     width=SD15_RUN["width"], num_inference_steps=SD15_RUN["steps"],
                     guidance_scale=SD15_RUN["guidance_scale"],
                     generator=torch.Generator().manual_seed(SD15_RUN["seed"]),
                     callback=lambda i, t, latents: steps.append(latents.clone())).images[0]
    out["lpw_sd15_latents"] = torch.cat(steps)
    out["lpw_sd15_image"] = torch.from_numpy(np.array(image))
    return out


def record_sdxl(lpwxl, tok1, tok2):
    import numpy as np
    import torch

    unet, vae, te1, te2 = sd_models.build_xl()
    check_same_as_file(sd_models.to_ldm_xl(unet, vae, te1, te2), "tiny-sdxl-fp16.safetensors")
    pipe = lpwxl.StableDiffusionXLLongPromptWeightingPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
        unet=unet, scheduler=euler_scheduler(), add_watermarker=False)
    out = {}
    with torch.no_grad():
        embeds, neg, pooled, neg_pooled = lpwxl.get_weighted_text_embeddings_sdxl(
            pipe, prompt=PROMPT, neg_prompt=NEG_PROMPT)
    out["lpw_sdxl_context"] = torch.cat([neg, embeds])
    out["lpw_sdxl_pooled"] = torch.cat([neg_pooled, pooled])
    steps = []

    def keep(pipe_, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return kwargs

    with torch.no_grad():
        image = pipe(PROMPT, negative_prompt=NEG_PROMPT, height=SDXL_RUN["height"],
                     width=SDXL_RUN["width"], num_inference_steps=SDXL_RUN["steps"],
                     guidance_scale=SDXL_RUN["guidance_scale"],
                     generator=torch.Generator().manual_seed(SDXL_RUN["seed"]),
                     callback_on_step_end=keep).images[0]
    out["lpw_sdxl_latents"] = torch.cat(steps)
    out["lpw_sdxl_image"] = torch.from_numpy(np.array(image))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--miner-repo", required=True, help="checkout or mirror of heurist-network/miner-release")
    parser.add_argument("--commit", default="HEAD", help="revision of the miner to import (default HEAD)")
    args = parser.parse_args()
    if not in_venv():
        py = os.path.join(VENV, "bin", "python")
        if not os.path.exists(py):
            sys.exit(f"{py} is missing: run tools/make_sd_models.py first, which creates it")
        os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="heurist-lpw-") as tmp:
        tok1, tok2 = clip_fixtures.make_tokenizers(tmp)
        commit, lpw15, lpwxl = clip_fixtures.load_reference(
            os.path.abspath(args.miner_repo), args.commit, tmp)
        out = record_sd15(lpw15, tok1)
        out.update(record_sdxl(lpwxl, tok1, tok2))
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "lpw.safetensors"))
    meta = {
        "source": f"heurist-network/miner-release {commit} "
                  f"{' '.join(clip_fixtures.LPW_FILES)}",
        "prompt": PROMPT, "neg_prompt": NEG_PROMPT,
        "prompt_tokens": len(tok1(PROMPT).input_ids) - 2,
        "sd15_run": SD15_RUN, "sdxl_run": SDXL_RUN,
        "shapes": {k: list(v.shape) for k, v in out.items()},
        "versions": {"torch": torch.__version__,
                     "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__},
    }
    with open(os.path.join(OUT, "lpw.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
