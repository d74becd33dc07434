#!/usr/bin/env python3
"""Write the torch / diffusers reference data that heurist-inference's image tests read.

The independent peers are PyTorch (the seeded CPU `torch.Generator` and `torch.randn`) and
diffusers (the schedulers the reference miner uses). The script makes its own virtual
environment under tools/.venv-image, installs pinned torch and diffusers there (the default torch
wheel is a large CUDA build; it runs on the CPU), and re-runs itself inside it. Nothing it
installs is committed; the JSON it writes is.

    python3 tools/make_image_fixtures.py                # every fixture below
    python3 tools/make_image_fixtures.py --only-noise   # torch/randn.json only

Writes:
  heurist-inference/tests/fixtures/torch/randn.json
      For every seed, shape and dtype: two consecutive `torch.randn(shape, generator=g,
      dtype=...)` draws from `torch.Generator("cpu").manual_seed(seed)`, dtype f32, f16 or bf16,
      as exact bit patterns (u32 / u16 / u16 as hex). Small draws are stored whole; big ones as the first and last 64 values
      plus the SHA-256 of the whole little-endian bit pattern (AVX-512's table: hashes and the
      first and last 8 values only). Plus mixed sequences of draws
      (small, big, f32, f16, bf16) from one generator, which exercise the cached second normal
      that torch's scalar path keeps in the generator (bf16 draws were added after the others: at
      the end of the first two sequences, and interleaved in the third).
      torch picks its CPU kernels by the CPU's capability (default, AVX2, AVX-512), and the f32
      normal fill for 16 or more elements differs between them (AVX2 has its own vectorised
      Box-Muller). The whole table is recorded once per capability this machine has, forced with
      ATEN_CPU_CAPABILITY.
  heurist-inference/tests/fixtures/diffusers/schedulers.json
      set_timesteps(n) tables (timesteps, sigmas, init_noise_sigma) of the SD 1.5 reference sampler
      (DPMSolverMultistepScheduler, sde-dpmsolver++, Karras sigmas) and the SDXL default
      (EulerDiscreteScheduler, leading spacing, steps_offset 1), and whole seeded trajectories
      with a fixed fake model output (eps = 0.9 * scale_model_input(sample, t)), so that no UNet
      is needed to check step().
      Added after them (the entries above stay as they were): EulerAncestralDiscreteScheduler and
      DDIMScheduler, and EulerDiscreteScheduler with the other spacings, under several
      configurations (beta schedule, timestep spacing, steps offset, set_alpha_to_one,
      clip_sample, prediction type), each table with its diffusers config; DDIM tables also carry
      alphas_cumprod at each timestep and at its previous timestep. Their trajectories name the
      table they use and, for DDIM, eta.
"""
import hashlib
import json
import math
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "tools", ".venv-image")
FIXTURES = os.path.join(ROOT, "heurist-inference", "tests", "fixtures")
PINS = ["torch==2.4.0", "diffusers==0.30.2", "numpy==1.26.4", "huggingface_hub==0.24.6"]

SEEDS = [0, 1, 42, 2288435497, 2**53 - 1]
SHAPES = [[1], [15], [16], [17], [100], [4, 64, 64], [1, 4, 128, 85]]
DTYPES = ["f32", "f16", "bf16"]
WHOLE_LIMIT = 128  # draws up to this many elements are stored whole
EDGE = 64  # values kept from each end of a bigger draw
SEQUENCES = [
    # (seed, [(shape, dtype), ...]) drawn in order from one generator
    (0, [([1], "f32"), ([16], "f32"), ([3], "f32"), ([5], "f16"), ([20], "f16"), ([1], "f32")]),
    (42, [([3], "f32"), ([2, 17], "f32"), ([7], "f16"), ([1], "f16"), ([4, 4, 4], "f32")]),
    (7, [([3], "bf16"), ([1], "f32"), ([20], "bf16"), ([5], "f16"), ([1], "bf16"), ([2, 17], "bf16"),
         ([3], "f32"), ([16], "bf16"), ([2], "bf16")]),
]
# bf16 draws appended to the sequences above (appended, so that their f32 and f16 draws stay the
# values recorded before bf16 was added).
SEQUENCE_BF16_TAILS = {
    0: [([7], "bf16"), ([33], "bf16"), ([1], "bf16")],
    42: [([1], "bf16"), ([4, 8], "bf16"), ([2], "f32"), ([3], "bf16")],
}

SCHEDULER_BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)
STEP_COUNTS = [1, 20, 25, 35]
TRAJ_SHAPE = [1, 4, 4, 4]
TRAJ_SEED = 42


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def bootstrap():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        venv.create(VENV, with_pip=True)
    subprocess.check_call([py, "-m", "pip", "install", "--quiet", *PINS])
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


def torch_dtype(torch, name):
    return {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[name]


def bit_words(torch, t):
    """The tensor's bit patterns as ints (u32 for f32, u16 for f16 and bf16), in memory order."""
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.float32:
        return [int(x) & 0xFFFFFFFF for x in t.view(torch.int32).tolist()], 8
    return [int(x) & 0xFFFF for x in t.view(torch.int16).tolist()], 4


def record_draw(torch, t, whole):
    words, width = bit_words(torch, t)
    flat = t.contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)  # numpy has no bfloat16; the same bytes
    raw = flat.numpy().tobytes()  # little-endian on x86
    hexed = lambda ws: [f"{w:0{width}x}" for w in ws]
    out = {"numel": len(words), "sha256": hashlib.sha256(raw).hexdigest()}
    if whole and len(words) <= WHOLE_LIMIT:
        out["bits"] = hexed(words)
    else:
        out["head"] = hexed(words[:EDGE] if whole else words[:8])
        out["tail"] = hexed(words[-EDGE:] if whole else words[-8:])
    return out


def noise_worker(whole):
    """Runs under one ATEN_CPU_CAPABILITY; prints that capability's table as JSON."""
    import torch

    torch.set_num_threads(1)
    records = []
    for seed in SEEDS:
        for shape in SHAPES:
            for dtype in DTYPES:
                g = torch.Generator("cpu").manual_seed(seed)
                draws = [
                    record_draw(torch, torch.randn(shape, generator=g, dtype=torch_dtype(torch, dtype)), whole)
                    for _ in range(2)
                ]
                records.append({"seed": seed, "shape": shape, "dtype": dtype, "draws": draws})
    sequences = []
    for seed, steps in SEQUENCES:
        steps = steps + SEQUENCE_BF16_TAILS.get(seed, [])
        g = torch.Generator("cpu").manual_seed(seed)
        draws = []
        for shape, dtype in steps:
            t = torch.randn(shape, generator=g, dtype=torch_dtype(torch, dtype))
            draws.append({"shape": shape, "dtype": dtype, **record_draw(torch, t, True)})
        sequences.append({"seed": seed, "draws": draws})
    json.dump(
        {
            "capability": torch.backends.cpu.get_cpu_capability(),
            "records": records,
            "sequences": sequences,
        },
        sys.stdout,
    )


def make_noise():
    import torch

    native = torch.backends.cpu.get_cpu_capability()
    tables = []
    for cap in ["default", "avx2", "avx512"]:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
        # AVX-512 runs the same kernels as AVX2 here (checked by the tests); store its hashes only.
        whole = "0" if cap == "avx512" else "1"
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--noise-worker", whole],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        table = json.loads(out)
        # torch silently stays at a lower capability when the CPU lacks the asked one.
        if table["capability"] != {"default": "NO AVX", "avx2": "AVX2", "avx512": "AVX512"}[cap]:
            print(f"skipping capability {cap}: torch ran {table['capability']}", file=sys.stderr)
            continue
        table["requested"] = cap
        table["stored_whole"] = whole == "1"
        tables.append(table)
    return {
        "torch_version": torch.__version__,
        "native_capability": native,
        "seeds": SEEDS,
        "tables": tables,
    }


def scheduler_cases():
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    return {
        "dpmpp_2m_sde_karras": lambda: DPMSolverMultistepScheduler(
            **SCHEDULER_BASE, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True
        ),
        "euler_leading": lambda: EulerDiscreteScheduler(**SCHEDULER_BASE, timestep_spacing="leading"),
    }


# The schedulers added for issue 7, in the order they are appended to the fixture. Each case is
# (diffusers class name, config overrides on SCHEDULER_BASE); the trajectories after them.
EXTRA_CASES = {
    "euler_linspace": ("EulerDiscreteScheduler", dict(timestep_spacing="linspace")),
    "euler_trailing_linear": (
        "EulerDiscreteScheduler",
        dict(timestep_spacing="trailing", beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    ),
    "euler_leading_vpred": (
        "EulerDiscreteScheduler",
        dict(timestep_spacing="leading", prediction_type="v_prediction"),
    ),
    "euler_ancestral_leading": ("EulerAncestralDiscreteScheduler", dict(timestep_spacing="leading")),
    "euler_ancestral_linspace": (
        "EulerAncestralDiscreteScheduler",
        dict(timestep_spacing="linspace", steps_offset=0),
    ),
    "euler_ancestral_trailing_linear": (
        "EulerAncestralDiscreteScheduler",
        dict(timestep_spacing="trailing", beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    ),
    "euler_ancestral_trailing_vpred": (
        "EulerAncestralDiscreteScheduler",
        dict(timestep_spacing="trailing", prediction_type="v_prediction"),
    ),
    # What DDIMScheduler.from_config of SD 1.5's or SDXL's scheduler config gives.
    "ddim_leading": (
        "DDIMScheduler",
        dict(timestep_spacing="leading", set_alpha_to_one=False, clip_sample=False),
    ),
    "ddim_trailing_alpha_one": (
        "DDIMScheduler",
        dict(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, steps_offset=0),
    ),
    "ddim_linspace_linear_clip_vpred": (
        "DDIMScheduler",
        dict(
            timestep_spacing="linspace",
            beta_schedule="linear",
            beta_start=0.0001,
            beta_end=0.02,
            set_alpha_to_one=True,
            clip_sample=True,
            clip_sample_range=1.5,
            prediction_type="v_prediction",
        ),
    ),
    "dpmpp_2m_sde_karras_vpred": (
        "DPMSolverMultistepScheduler",
        dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True, prediction_type="v_prediction"),
    ),
}
# 61 steps: numpy's arange makes 62 "trailing" timesteps there, which diffusers keeps.
EXTRA_STEP_COUNTS = [1, 3, 7, 16, 20, 25, 35, 50, 61]
# (case, steps, DDIM eta)
EXTRA_TRAJECTORIES = [
    ("euler_linspace", 12, None),
    ("euler_leading_vpred", 10, None),
    ("euler_ancestral_leading", 20, None),
    ("euler_ancestral_leading", 5, None),
    ("euler_ancestral_linspace", 9, None),
    ("euler_ancestral_trailing_vpred", 10, None),
    ("ddim_leading", 20, 0.0),
    ("ddim_leading", 10, 0.5),
    ("ddim_trailing_alpha_one", 8, 1.0),
    ("ddim_linspace_linear_clip_vpred", 12, 0.3),
    ("dpmpp_2m_sde_karras_vpred", 8, None),
]


def extra_case(name):
    import diffusers

    class_name, overrides = EXTRA_CASES[name]
    return getattr(diffusers, class_name)(**{**SCHEDULER_BASE, **overrides})


def f32_list(t):
    return [float(x) for x in t.to("cpu").float().reshape(-1).tolist()]


def make_schedulers():
    import diffusers
    import torch

    torch.set_num_threads(1)
    out = {"diffusers_version": diffusers.__version__, "torch_version": torch.__version__}
    out["base_config"] = SCHEDULER_BASE
    tables = {}
    for name, make in scheduler_cases().items():
        sched = make()
        config = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))  # JSON has no inf
            for k, v in sched.config.items()
            if not k.startswith("_")
        }
        tables[name] = {"config": config, "steps": []}
        for n in STEP_COUNTS:
            sched.set_timesteps(n)
            tables[name]["steps"].append(
                {
                    "num_inference_steps": n,
                    "timesteps": [float(x) for x in sched.timesteps.tolist()],
                    "sigmas": f32_list(sched.sigmas),
                    "init_noise_sigma": float(sched.init_noise_sigma),
                }
            )
    for name in EXTRA_CASES:
        sched = extra_case(name)
        config = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in sched.config.items()
            if not k.startswith("_")
        }
        tables[name] = {"class_name": type(sched).__name__, "config": config, "steps": []}
        for n in EXTRA_STEP_COUNTS:
            sched.set_timesteps(n)
            entry = {
                "num_inference_steps": n,
                "timesteps": [float(x) for x in sched.timesteps.tolist()],
                "init_noise_sigma": float(sched.init_noise_sigma),
            }
            if hasattr(sched, "sigmas"):
                entry["sigmas"] = f32_list(sched.sigmas)
            else:
                ratio = sched.config.num_train_timesteps // n
                prev = lambda t: sched.alphas_cumprod[t] if t >= 0 else sched.final_alpha_cumprod
                ts = [int(t) for t in sched.timesteps.tolist()]
                entry["alphas_cumprod"] = [float(sched.alphas_cumprod[t]) for t in ts]
                entry["alphas_cumprod_prev"] = [float(prev(t - ratio)) for t in ts]
            tables[name]["steps"].append(entry)
    out["tables"] = tables

    trajectories = []
    for name, make in scheduler_cases().items():
        for n in ([20, 5] if name.startswith("dpm") else [20]):
            sched = make()
            sched.set_timesteps(n)
            g = torch.Generator("cpu").manual_seed(TRAJ_SEED)
            latents = torch.randn(TRAJ_SHAPE, generator=g, dtype=torch.float32)
            initial = f32_list(latents)
            latents = latents * sched.init_noise_sigma
            steps = []
            for t in sched.timesteps:
                x_in = sched.scale_model_input(latents, t)
                eps = 0.9 * x_in
                latents = sched.step(eps, t, latents, generator=g).prev_sample
                steps.append(f32_list(latents))
            trajectories.append(
                {
                    "scheduler": name,
                    "num_inference_steps": n,
                    "seed": TRAJ_SEED,
                    "shape": TRAJ_SHAPE,
                    "capability": torch.backends.cpu.get_cpu_capability(),
                    "fake_model": "eps = 0.9 * scale_model_input(sample, t)",
                    "initial_noise": initial,
                    "latents_after_step": steps,
                }
            )
    for name, n, eta in EXTRA_TRAJECTORIES:
        sched = extra_case(name)
        sched.set_timesteps(n)
        g = torch.Generator("cpu").manual_seed(TRAJ_SEED)
        latents = torch.randn(TRAJ_SHAPE, generator=g, dtype=torch.float32)
        initial = f32_list(latents)
        latents = latents * sched.init_noise_sigma
        steps = []
        for t in sched.timesteps:
            eps = 0.9 * sched.scale_model_input(latents, t)
            if eta is None:
                latents = sched.step(eps, t, latents, generator=g).prev_sample
            else:
                latents = sched.step(eps, t, latents, eta=eta, generator=g).prev_sample
            steps.append(f32_list(latents))
        trajectories.append(
            {
                "scheduler": name,
                "num_inference_steps": n,
                "eta": eta,
                "seed": TRAJ_SEED,
                "shape": TRAJ_SHAPE,
                "capability": torch.backends.cpu.get_cpu_capability(),
                "fake_model": "eps = 0.9 * scale_model_input(sample, t)",
                "initial_noise": initial,
                "latents_after_step": steps,
            }
        )
    out["trajectories"] = trajectories
    return out


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def main():
    if not in_venv():
        bootstrap()
    if len(sys.argv) > 2 and sys.argv[1] == "--noise-worker":
        noise_worker(sys.argv[2] == "1")
        return
    write(os.path.join(FIXTURES, "torch", "randn.json"), make_noise())
    if "--only-noise" in sys.argv[1:]:
        return
    write(os.path.join(FIXTURES, "diffusers", "schedulers.json"), make_schedulers())


if __name__ == "__main__":
    main()
