#!/usr/bin/env python3
"""Honest sampled answers of SmolLM2-135M-Instruct made by llama.cpp, for heurist-verify.

heurist-verify judges a sampled chat answer by its likelihood under the claimed model
(heurist-verify/src/llm/likelihood.rs). Network miners run other engines than ours, so its
thresholds must hold on answers another engine sampled honestly. This script makes such
answers with llama.cpp (llama-cpp-python, the venv of tools/make_llama_cpp_fixtures.py):
JOBS prompts, each answered once with pure temperature sampling, the way a job that sends only
a temperature is sampled by vLLM's defaults (top-k, top-p, min-p and penalties off), with the
reference miner's stop strings, a per-job seed, and llama.cpp's plain CPU kernels.

The detection-table example (heurist-verify/examples/detection_table.rs) reads the prompts
and answers, rescores each answer on our engine, and counts false accusations (its token usage is recounted too); it also uses the prompts
for its own honest and substitute answers.

    python3 tools/fetch_smollm2.py
    tools/.venv-llama/bin/python tools/make_llm_calibration.py [JOBS]

Writes heurist-verify/tests/fixtures/llama-cpp/smollm2_sampled.json.
"""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_llama_cpp_fixtures as base  # noqa: E402  (model path, loader, CPU kernel settings)

ROOT = base.ROOT
OUT = os.path.join(ROOT, "heurist-verify", "tests", "fixtures", "llama-cpp", "smollm2_sampled.json")
JOBS = 500
MAX_TOKENS = 48
TEMPERATURES = [0.7, 1.0]
# heurist_protocol::stream::REFERENCE_STOP_STRINGS
STOP = ["[End]", "[end]", "<|im_start|>", "<|im_end|>"]

TASKS = [
    "Explain {} to a ten-year-old.",
    "Write two sentences about {}.",
    "What is the most surprising fact about {}?",
    "Give three tips related to {}.",
    "Describe {} in one short paragraph.",
    "Why do people care about {}?",
    "Write a haiku about {}.",
    "List some common misconceptions about {}.",
    "How would you teach {} to a beginner?",
    "Summarize the history of {} briefly.",
    "What questions should I ask about {}?",
    "Compare {} with something from everyday life.",
    "Tell a very short story involving {}.",
    "What are the pros and cons of {}?",
    "Write a friendly tweet about {}.",
    "What is a good first book about {}?",
    "Give a one-line definition of {}.",
    "How does {} affect daily life?",
    "What would a world without {} look like?",
    "Write a riddle whose answer is {}.",
]
TOPICS = [
    "photosynthesis", "the moon", "volcanoes", "honey bees", "the internet", "rainbows",
    "gravity", "chess", "bread baking", "the ocean", "electric cars", "music theory",
    "recycling", "dinosaurs", "the human heart", "clouds", "bicycles", "coffee",
    "the Roman Empire", "solar panels", "friendship", "mathematics", "sleep", "trees",
    "the printing press",
]


def prompts():
    out = []
    for t in TOPICS:
        for task in TASKS:
            out.append(task.format(t))
    return out[:jobs_wanted()]


def jobs_wanted():
    """JOBS, or the first argument (fewer jobs for a quick run)."""
    return int(sys.argv[1]) if len(sys.argv) > 1 else JOBS


def main():
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    # One thread: sampling does not depend on it, and on a shared 2-core machine llama.cpp's
    # spinning thread barrier made two threads 4x slower than one.
    base.N_THREADS = 1
    path = base.model_path()
    with open(path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    llm = base.load(path, base.GGML_TYPE_F16)
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    jobs = []
    for i, question in enumerate(prompts()):
        messages = [{"role": "user", "content": question}]
        temperature = TEMPERATURES[i % len(TEMPERATURES)]
        rendered = formatter(messages=messages).prompt
        out = llm.create_completion(
            rendered,
            max_tokens=MAX_TOKENS,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            frequency_penalty=0.0,
            presence_penalty=0.0,
            seed=1000 + i,
            stop=STOP,
        )
        choice = out["choices"][0]
        jobs.append({
            "messages": messages,
            "temperature": temperature,
            "max_tokens": MAX_TOKENS,
            "seed": 1000 + i,
            "text": choice["text"],
            "finish_reason": choice["finish_reason"],
            "prompt_tokens": out["usage"]["prompt_tokens"],
            "completion_tokens": out["usage"]["completion_tokens"],
        })
        if i % 10 == 0:
            print(i, temperature, repr(choice["text"][:60]), file=sys.stderr)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    doc = {
        "tool": f"{base.LLAMA_CPP_PYTHON}, plain CPU kernels, f16 KV cache, {base.N_THREADS} thread",
        "model": os.path.basename(path),
        "model_sha256": sha256,
        "sampling": "temperature only: top_k 0, top_p 1, min_p 0, typical_p 1, no penalties; reference stop strings",
        "jobs": jobs,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=0, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
