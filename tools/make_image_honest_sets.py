#!/usr/bin/env python3
"""Honest image results of the reference miner's stack, to calibrate and judge heurist-verify's
image check against another engine than its own.

A verifier built on these crates re-runs an image job with heurist-inference and compares the
miner's PNG with its re-run; the network's miners run diffusers on GPUs in f16. So the check's
bars must be set on, and judged against, images that *diffusers* makes at the reference miner's
pins and with its own code path, in the precisions miners run, never on this engine's images:

  - torch 2.4.0, diffusers 0.30.2, transformers 4.44.2, peft 0.12.0 (tools/.venv-image);
  - the miner's vendored long-prompt-weighting pipelines (vendor/lpw_stable_diffusion.py and
    vendor/lpw_stable_diffusion_xl.py of heurist-network/miner-release, imported at run time
    from a checkout or mirror, never copied here) with the real CLIP tokenizer of
    tools/make_clip_fixtures.py;
  - its schedulers: SD 1.5 DPM-Solver++ 2M SDE with Karras sigmas, SDXL the checkpoint's
    Euler; its call: `pipe(prompt, negative_prompt=..., height, width, num_inference_steps,
    guidance_scale, generator=torch.Generator().manual_seed(seed))`, the PNG of `images[0]`;
  - its LoRA path: `load_lora_weights` (no fuse) and the job weight passed only as
    `cross_attention_kwargs={"scale": w}`, which scales the UNet's LoRA and leaves the text
    encoders' at 1.0;
  - three precisions: f32; f16, what a GPU miner runs (`torch_dtype=torch.float16`: the
    latents are drawn in f16 on the CPU generator); bf16, the nearest thing on a CPU to a
    16-bit GPU kernel with coarser rounding (latents drawn in bf16).

The models are the tiny random-weight SD 1.5 and SDXL of tools/make_sd_models.py (rebuilt from
their seeds and checked equal to the committed single files); the composites put the committed
kohya LoRAs (tiny-sd15-lora, tiny-sdxl-lora) with their alphas multiplied by LORA_ALPHA_GAIN,
so that the LoRA moves the picture as a real style LoRA does (the committed files barely move
it); heurist-verify's table derives the same file the same way.

Four job kinds, each split into a calibration set and an evaluation set with disjoint prompt
vocabularies and seeds: `sd15` and `sdxl` (plain prompts), `lora` (composites of both
families), `weighted` (A1111 weighting syntax, nesting, de-emphasis, prompts past 77 tokens;
both families). Every job is run in each precision.

    python3 tools/make_image_honest_sets.py --miner-repo PATH [--commit REV]

Writes heurist-verify/tests/fixtures/honest_images/:
  images.safetensors  `images`: u8 [N, 64, 64, 3], row i made by row i of jobs.json
  jobs.json           per image: split, kind, family, lora (file, alpha gain, weight) or null,
                      prompt, neg_prompt, seed, steps, guidance, width, height, precision; and
                      the versions and the miner commit
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
VENV = os.path.join(TOOLS, ".venv-image")
OUT = os.path.join(ROOT, "heurist-verify", "tests", "fixtures", "honest_images")
SD = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "sd")

sys.path.insert(0, TOOLS)
import make_clip_fixtures as clip_fixtures  # noqa: E402
import make_lpw_fixtures as lpw_fixtures  # noqa: E402
import make_sd_models as sd_models  # noqa: E402

SIDE = 64
LORA_ALPHA_GAIN = 8.0
LORA_FILES = {"sd15": "tiny-sd15-lora.safetensors", "sdxl": "tiny-sdxl-lora.safetensors"}
LORA_WEIGHTS = [0.6, 0.7, 0.8, 1.0]
KINDS = ["sd15", "sdxl", "lora", "weighted"]
JOBS_PER_KIND = {"calibration": 6, "evaluation": 18}
PRECISIONS = ["f32", "f16", "bf16"]

# Disjoint vocabularies: the calibration set never sees an evaluation prompt's words.
WORDS = {
    "calibration": dict(
        subjects=["a lighthouse on a cliff", "an old sailor", "a red fox", "a steam locomotive",
                  "a koi pond", "a desert caravan", "a paper crane", "a mountain cabin"],
        styles=["oil painting", "watercolor", "pixel art", "studio photo", "ink sketch"],
        extras=["golden hour", "soft light", "high contrast", "muted colours", "film grain",
                "wide angle", "symmetrical", "fog"],
        negatives=["lowres", "blurry", "watermark", "bad anatomy", "jpeg artifacts"]),
    "evaluation": dict(
        subjects=["a cyberpunk street", "an astronaut on a horse", "a bowl of ramen",
                  "an isometric castle", "a snowy owl", "a jazz trio", "a glass teapot",
                  "a coral reef", "a clockwork dragon", "a rainy bus stop"],
        styles=["anime", "charcoal drawing", "3d render", "polaroid", "stained glass",
                "ukiyo-e"],
        extras=["neon", "rain", "volumetric light", "bokeh", "dramatic sky", "pastel palette",
                "cinematic", "intricate details", "macro shot", "long exposure"],
        negatives=["text", "signature", "cropped", "noisy", "deformed hands", "overexposed"]),
}


def weighted(rng, phrase):
    """One A1111 weighting of a phrase."""
    form = rng.randrange(5)
    if form == 0:
        return f"({phrase}:{rng.choice([0.6, 0.8, 1.1, 1.3, 1.5])})"
    if form == 1:
        return "(" * rng.randrange(1, 4) + phrase + ")" * rng.randrange(1, 4)
    if form == 2:
        return f"[{phrase}]"
    if form == 3:
        return f"(({phrase}:1.2), detailed)"
    return phrase


def make_jobs(split, seed):
    rng = random.Random(seed)
    w = WORDS[split]
    jobs = []
    for kind in KINDS:
        for i in range(JOBS_PER_KIND[split]):
            family = {"sd15": "sd15", "sdxl": "sdxl"}.get(kind, ["sd15", "sdxl"][i % 2])
            parts = [rng.choice(w["subjects"]), rng.choice(w["styles"]),
                     *rng.sample(w["extras"], rng.randrange(1, 4))]
            if kind == "weighted":
                parts = [weighted(rng, p) for p in parts]
                if i % 3 == 0:
                    # Past 77 tokens: the pipelines' chunking.
                    parts += [weighted(rng, p) for p in rng.sample(w["extras"], len(w["extras"]))] * 3
            negs = rng.sample(w["negatives"], rng.randrange(0, 3))
            neg = ", ".join(weighted(rng, n) if kind == "weighted" else n for n in negs)
            job = dict(split=split, kind=kind, family=family, lora=None,
                       prompt=", ".join(parts), neg_prompt=neg,
                       seed=rng.randrange(0, 1 << 53), steps=rng.randrange(6, 15),
                       guidance=rng.choice([5.0, 6.0, 7.0, 7.5, 8.0]), width=SIDE, height=SIDE)
            if kind == "lora":
                job["lora"] = dict(file=LORA_FILES[family], alpha_gain=LORA_ALPHA_GAIN,
                                   weight=rng.choice(LORA_WEIGHTS))
            jobs.append(job)
    return jobs


def strong_lora(family, tmp):
    """The committed kohya LoRA with every `.alpha` times LORA_ALPHA_GAIN, in `tmp`."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(os.path.join(SD, LORA_FILES[family]))
    tensors = {k: (v * LORA_ALPHA_GAIN).to(v.dtype) if k.endswith(".alpha") else v
               for k, v in tensors.items()}
    path = os.path.join(tmp, f"strong-{LORA_FILES[family]}")
    save_file(tensors, path)
    return path


class Pipelines:
    """One reference pipeline per (family, precision, lora file)."""

    def __init__(self, lpw15, lpwxl, tok1, tok2, tmp):
        import torch

        self.torch = torch
        self.lpw15, self.lpwxl, self.tok1, self.tok2, self.tmp = lpw15, lpwxl, tok1, tok2, tmp
        unet, vae, te = sd_models.build()
        lpw_fixtures.check_same_as_file(sd_models.to_ldm(unet, vae, te), "tiny-sd15-fp16.safetensors")
        xunet, xvae, xte1, xte2 = sd_models.build_xl()
        lpw_fixtures.check_same_as_file(sd_models.to_ldm_xl(xunet, xvae, xte1, xte2),
                                        "tiny-sdxl-fp16.safetensors")
        self.models = {"sd15": (unet, vae, te), "sdxl": (xunet, xvae, xte1, xte2)}
        self.cache = {}

    def get(self, family, precision, lora):
        import copy

        torch = self.torch
        key = (family, precision, lora["file"] if lora else None)
        if key in self.cache:
            return self.cache[key]
        parts = [copy.deepcopy(m) for m in self.models[family]]
        if family == "sd15":
            unet, vae, te = parts
            pipe = self.lpw15.StableDiffusionLongPromptWeightingPipeline(
                vae=vae, text_encoder=te, tokenizer=self.tok1, unet=unet,
                scheduler=lpw_fixtures.dpm_scheduler(), safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
        else:
            unet, vae, te1, te2 = parts
            pipe = self.lpwxl.StableDiffusionXLLongPromptWeightingPipeline(
                vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=self.tok1,
                tokenizer_2=self.tok2, unet=unet, scheduler=lpw_fixtures.euler_scheduler(),
                add_watermarker=False)
        # The reference: `from_single_file(..., torch_dtype=torch.float16)`, every part.
        pipe.to(dtype={"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[precision])
        pipe.set_progress_bar_config(disable=True)
        if lora:
            path = strong_lora(family, self.tmp)
            pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path))
        self.cache[key] = pipe
        return pipe

    def run(self, job, precision):
        import numpy as np

        torch = self.torch
        pipe = self.get(job["family"], precision, job["lora"])
        kwargs = dict(height=job["height"], width=job["width"],
                      num_inference_steps=job["steps"], guidance_scale=job["guidance"],
                      negative_prompt=job["neg_prompt"],
                      generator=torch.Generator().manual_seed(job["seed"]))
        if job["lora"]:
            kwargs["cross_attention_kwargs"] = {"scale": job["lora"]["weight"]}
        with torch.no_grad():
            image = pipe(job["prompt"], **kwargs).images[0]
        return np.array(image.convert("RGB"), dtype=np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--miner-repo", required=True,
                        help="checkout or mirror of heurist-network/miner-release")
    parser.add_argument("--commit", default="HEAD", help="revision of the miner (default HEAD)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N jobs of each split (a quick look, not a fixture)")
    args = parser.parse_args()
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        py = os.path.join(VENV, "bin", "python")
        if not os.path.exists(py):
            sys.exit(f"{py} is missing: run tools/make_sd_models.py first, which creates it")
        os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])
    import numpy as np
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    jobs = make_jobs("calibration", 11) + make_jobs("evaluation", 29)
    if args.limit:
        jobs = [j for s in ("calibration", "evaluation") for j in jobs if j["split"] == s][: args.limit]
    rows, images = [], []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="heurist-honest-images-") as tmp:
        tok1, tok2 = clip_fixtures.make_tokenizers(tmp)
        commit, lpw15, lpwxl = clip_fixtures.load_reference(
            os.path.abspath(args.miner_repo), args.commit, tmp)
        pipes = Pipelines(lpw15, lpwxl, tok1, tok2, tmp)
        for n, job in enumerate(jobs):
            for precision in PRECISIONS:
                images.append(pipes.run(job, precision))
                rows.append(dict(job, precision=precision))
            print(f"{n + 1}/{len(jobs)} {job['split']} {job['kind']} {job['family']} "
                  f"{time.time() - started:.0f} s", file=sys.stderr, flush=True)
    if args.limit:
        for i in range(0, len(images), len(PRECISIONS)):
            a = images[i].astype(np.float64)
            for j in range(1, len(PRECISIONS)):
                mse = ((a - images[i + j]) ** 2).mean()
                print(rows[i]["kind"], rows[i]["family"], PRECISIONS[j], "vs f32:",
                      f"{10 * np.log10(255 ** 2 / max(mse, 1e-12)):.1f} dB")
        return
    os.makedirs(OUT, exist_ok=True)
    save_file({"images": torch.from_numpy(np.stack(images))},
              os.path.join(OUT, "images.safetensors"))
    meta = {
        "source": f"heurist-network/miner-release {commit} {' '.join(clip_fixtures.LPW_FILES)}",
        "versions": {"torch": torch.__version__,
                     "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__,
                     "peft": __import__("peft").__version__},
        "lora_alpha_gain": LORA_ALPHA_GAIN,
        "seconds": round(time.time() - started),
        "images": rows,
    }
    with open(os.path.join(OUT, "jobs.json"), "w") as f:
        json.dump(meta, f, indent=0)
        f.write("\n")
    print(f"{len(rows)} images in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
