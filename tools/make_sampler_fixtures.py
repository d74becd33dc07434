#!/usr/bin/env python3
"""Seeded diffusers runs of the tiny SD 1.5 model with the samplers beside the network's:
Euler ancestral and DDIM, for heurist-inference's image engine test (tests/it/image_sd_samplers.rs).

The tiny model is tools/make_sd_models.py's (its diffusers folder in
heurist-inference/tests/fixtures/sd/tiny-sd15-diffusers; the weights are exact f16 values, so
the f16 folder run in f32 is the model the engine runs). The prompts are that script's token ids
(tests/fixtures/sd/reference.json), encoded by the tiny CLIP; the schedulers get SD 1.5's config
as the engine does ("leading" spacing, steps offset 1, scaled-linear betas 0.00085 to 0.012, and
for DDIM set_alpha_to_one=False, clip_sample=False, eta 0). Every step's latents and the final
8-bit image are kept.

Runs in tools/.venv-image (diffusers 0.30.2, torch 2.4.0: the pins of tools/make_sd_models.py).
Writes tests/fixtures/sd/samplers.safetensors and samplers.json.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "tools", ".venv-image")
SD = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "sd")
EOS = 49407
# A seed and size of their own, so these runs do not repeat reference.json's DPM++ run.
RUN = dict(seed=1234, width=64, height=64, steps=6, guidance_scale=7.0)
SD15_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                   beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")


def main():
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        py = os.path.join(VENV, "bin", "python")
        os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])
    import numpy as np
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerAncestralDiscreteScheduler,
                           StableDiffusionPipeline, UNet2DConditionModel)
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    torch.set_num_threads(2)
    folder = os.path.join(SD, "tiny-sd15-diffusers")
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).float().eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).float().eval()
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).float().eval()
    with open(os.path.join(SD, "reference.json")) as f:
        prompt_ids = json.load(f)["prompt_ids"]
    ids = torch.tensor([p + [EOS] * (77 - len(p)) for p in prompt_ids], dtype=torch.int64)
    with torch.no_grad():
        hidden = text_encoder(ids)[0]

    schedulers = {
        "euler_a": EulerAncestralDiscreteScheduler(**SD15_CONFIG),
        "ddim": DDIMScheduler(**SD15_CONFIG, set_alpha_to_one=False, clip_sample=False),
    }
    out = {}
    for name, scheduler in schedulers.items():
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None,
                                       unet=unet, scheduler=scheduler, safety_checker=None,
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
        out[f"{name}_latents"] = torch.cat(steps).contiguous()
        # The pipeline's PIL conversion: (x * 255).round() of the [0, 1] image.
        out[f"{name}_image"] = torch.from_numpy((image[0] * 255).round().astype(np.uint8))

    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(SD, "samplers.safetensors"))
    with open(os.path.join(SD, "samplers.json"), "w") as f:
        json.dump({"run": RUN, "scheduler_config": SD15_CONFIG,
                   "versions": {"torch": torch.__version__,
                                "diffusers": __import__("diffusers").__version__}}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
