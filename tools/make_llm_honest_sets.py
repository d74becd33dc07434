#!/usr/bin/env python3
"""Honest chat answers of SmolLM2-135M-Instruct made by engines that are not ours, and cheats.

heurist-verify judges the network's miners, who run vLLM and llama.cpp on GPUs in half
precision, not this project's engine. Its bars must therefore be set on honest answers from
*other* engines and precisions, and judged on answers disjoint from those. This script makes
them, for two disjoint prompt sets (different task templates, different seeds):

- `calibration`: 75 prompts, each answered greedily and sampled (T 0.7 and 1.0 alternating);
  heurist-verify's thresholds are set on these rows only (`examples/calibrate_llm.rs`);
- `evaluation`: 300 prompts, answered the same way, judged by `examples/detection_table.rs`.

Engines (one JSON file each under heurist-verify/tests/fixtures/honest/):

- `llama-f16kv`: llama.cpp (llama-cpp-python 0.3.36, plain CPU kernels), its default f16 KV
  cache, on the Q4_1 GGUF;
- `llama-f32kv`: the same with an f32 KV cache;
- `tf-f32`: transformers 4.44.2 (torch 2.4.0) in float32 on the GGUF's weights dequantised by
  gguf-py (`make_gguf_hidden_fixtures.load_model`), batches of 16 prompts, left-padded;
- `tf-bf16`: the same model cast to bfloat16 (the nearest thing on a CPU to a GPU miner's
  half precision).

Sampling is what a job that sends only a temperature gets from vLLM: the whole tempered
distribution (top-k 0, top-p 1, min-p 0, no penalties; llama-cpp-python's own chat defaults
differ and are overridden), with the reference miner's stop strings. Greedy is temperature 0.
`completion_tokens` counts what each engine generated (transformers' rows count the
end-of-generation token, as vLLM does).

The cheats of the detection table are made by the example itself (a cheater's engine does not
matter): substitute models and hotter sampling on this project's engine, the rest derived from
these honest answers.

    python3 tools/fetch_smollm2.py
    python3 -m venv tools/.venv-llama
    tools/.venv-llama/bin/pip install llama-cpp-python==0.3.36 numpy==2.4.6 gguf==0.19.0 \\
        torch==2.4.0 transformers==4.44.2 jinja2
    tools/.venv-llama/bin/python tools/make_llm_honest_sets.py ENGINE [ENGINE...]

ENGINE is one of llama-f16kv, llama-f32kv, tf-f32, tf-bf16 (several run one after the other;
run them as separate processes to use more cores). Each runs on one thread.
"""
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_llama_cpp_fixtures as base  # noqa: E402  (model path, loader, CPU kernel settings)

ROOT = base.ROOT
OUT_DIR = os.path.join(ROOT, "heurist-verify", "tests", "fixtures", "honest")
MAX_TOKENS = 96
TEMPERATURES = [0.7, 1.0]
TF_BATCH = 16
# heurist_protocol::stream::REFERENCE_STOP_STRINGS
STOP = ["[End]", "[end]", "<|im_start|>", "<|im_end|>"]

# Task templates: the calibration set uses the first three, the evaluation set the other
# twelve, so no prompt (and no template) is in both.
TASKS = [
    "Explain {} to a ten-year-old.",
    "Write two sentences about {}.",
    "What is the most surprising fact about {}?",
    "Give three tips related to {}.",
    # evaluation
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
]
CALIBRATION_TASKS = 3
TOPICS = [
    "photosynthesis", "the moon", "volcanoes", "honey bees", "the internet", "rainbows",
    "gravity", "chess", "bread baking", "the ocean", "electric cars", "music theory",
    "recycling", "dinosaurs", "the human heart", "clouds", "bicycles", "coffee",
    "the Roman Empire", "solar panels", "friendship", "mathematics", "sleep", "trees",
    "the printing press",
]


def jobs():
    """Every job: (set, index in the set, messages, temperature, seed). Each prompt is a greedy
    job and a sampled job."""
    out = []
    for name, tasks, seed0 in [("calibration", TASKS[:CALIBRATION_TASKS], 20000),
                               ("evaluation", TASKS[CALIBRATION_TASKS:], 30000)]:
        prompts = [task.format(topic) for task in tasks for topic in TOPICS]
        for i, question in enumerate(prompts):
            messages = [{"role": "user", "content": question}]
            out.append({"set": name, "prompt": i, "messages": messages, "temperature": 0.0, "seed": seed0 + 2 * i})
            out.append({"set": name, "prompt": i, "messages": messages,
                        "temperature": TEMPERATURES[i % len(TEMPERATURES)], "seed": seed0 + 2 * i + 1})
    return out


def cut_at_stop(text):
    """The text before the first stop string, and whether one was found."""
    cut = min((text.find(s) for s in STOP if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class LlamaCpp:
    def __init__(self, path, kv_type):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        base.disable_extra_buffer_types()
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=1024, n_threads=1, n_threads_batch=1, type_k=kv_type,
                         type_v=kv_type, verbose=False)
        self.formatter = Jinja2ChatFormatter(
            template=self.llm.metadata["tokenizer.chat_template"],
            eos_token=self.llm._model.token_get_text(self.llm.token_eos()),
            bos_token=self.llm._model.token_get_text(self.llm.token_bos()),
        )

    def render(self, messages):
        return self.formatter(messages=messages).prompt

    def answer(self, job, temperature):
        out = self.llm.create_completion(
            self.render(job["messages"]),
            max_tokens=MAX_TOKENS,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            frequency_penalty=0.0,
            presence_penalty=0.0,
            seed=job["seed"],
            stop=STOP,
        )
        choice = out["choices"][0]
        return {
            "text": choice["text"],
            "finish_reason": choice["finish_reason"],
            "prompt_tokens": out["usage"]["prompt_tokens"],
            "completion_tokens": out["usage"]["completion_tokens"],
        }


def record(job, answer, **extra):
    row = {"set": job["set"], "prompt": job["prompt"], "messages": job["messages"], "temperature": job["temperature"],
           "seed": job["seed"]}
    row.update(extra)
    row.update(answer)
    return row


def run_llama(kv_type):
    path = base.model_path()
    engine = LlamaCpp(path, kv_type)
    rows = []
    for n, job in enumerate(jobs()):
        rows.append(record(job, engine.answer(job, job["temperature"])))
        progress(n, rows[-1])
    kv = "f16" if kv_type == base.GGML_TYPE_F16 else "f32"
    return {
        "engine": f"{base.LLAMA_CPP_PYTHON}, plain CPU kernels, {kv} KV cache, 1 thread",
        "model": os.path.basename(path),
        "model_sha256": sha256(path),
    }, rows


def run_transformers(dtype_name):
    import torch
    import transformers
    import make_gguf_hidden_fixtures as hidden

    torch.set_num_threads(1)
    path = base.model_path()
    tok = LlamaCpp.__new__(LlamaCpp)
    tok_llm_path = path
    # The tokenizer and chat template are llama.cpp's (the GGUF's own): only the weights'
    # arithmetic differs between the engines.
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = Llama(model_path=tok_llm_path, vocab_only=True, verbose=False)
    tok.llm = vocab
    tok.formatter = Jinja2ChatFormatter(
        template=vocab.metadata["tokenizer.chat_template"],
        eos_token=vocab._model.token_get_text(vocab.token_eos()),
        bos_token=vocab._model.token_get_text(vocab.token_bos()),
    )
    hidden.MODEL = path
    model = hidden.load_model()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = model.to(dtype).eval()
    eos = vocab.token_eos()
    pad = eos
    rows = []
    all_jobs = jobs()
    # Greedy and sampled jobs batch apart (one generate call has one temperature).
    groups = {}
    for job in all_jobs:
        groups.setdefault(job["temperature"], []).append(job)
    n = 0
    for temperature, group in groups.items():
        for start in range(0, len(group), TF_BATCH):
            batch = group[start:start + TF_BATCH]
            ids = [vocab.tokenize(tok.render(j["messages"]).encode("utf-8"), special=True) for j in batch]
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
            mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
            kwargs = dict(max_new_tokens=MAX_TOKENS, eos_token_id=eos, pad_token_id=pad, attention_mask=mask)
            if temperature == 0.0:
                kwargs.update(do_sample=False)
            else:
                torch.manual_seed(batch[0]["seed"])
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            with torch.no_grad():
                out = model.generate(input_ids, **kwargs)
            for j, prompt_ids, row in zip(batch, ids, out[:, width:].tolist()):
                generated = []
                for t in row:
                    generated.append(t)
                    if t == eos:
                        break
                ended = bool(generated) and generated[-1] == eos
                body = generated[:-1] if ended else generated
                text = vocab.detokenize(body).decode("utf-8", errors="ignore")
                text, stopped = cut_at_stop(text)
                if stopped:
                    # vLLM stops generating at the token that completes a stop string.
                    generated = next(body[:k] for k in range(1, len(body) + 1)
                                     if cut_at_stop(vocab.detokenize(body[:k]).decode("utf-8", errors="ignore"))[1])
                answer = {
                    "text": text,
                    "finish_reason": "stop" if ended or stopped else "length",
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": len(generated),
                }
                rows.append(record(j, answer))
                progress(n, rows[-1])
                n += 1
    order = {(j["set"], j["prompt"], j["temperature"]): k for k, j in enumerate(all_jobs)}
    rows.sort(key=lambda r: order[(r["set"], r["prompt"], r["temperature"])])
    return {
        "engine": f"transformers {transformers.__version__}, torch {torch.__version__}, {dtype_name}, "
                  f"eager attention, batches of {TF_BATCH} left-padded, 1 thread, on the GGUF's weights dequantised by gguf-py",
        "model": os.path.basename(path),
        "model_sha256": sha256(path),
    }, rows


def progress(n, row):
    if n % 50 == 0:
        print(time.strftime("%H:%M:%S"), n, row["set"], row["temperature"], repr(row["text"][:50]), file=sys.stderr,
              flush=True)


def main():
    engines = sys.argv[1:]
    known = {"llama-f16kv", "llama-f32kv", "tf-f32", "tf-bf16"}
    if not engines or any(e not in known for e in engines):
        sys.exit(f"usage: make_llm_honest_sets.py ENGINE... (of {sorted(known)})")
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in engines:
        if name == "llama-f16kv":
            meta, rows = run_llama(base.GGML_TYPE_F16)
        elif name == "llama-f32kv":
            meta, rows = run_llama(base.GGML_TYPE_F32)
        elif name == "tf-f32":
            meta, rows = run_transformers("f32")
        else:
            meta, rows = run_transformers("bf16")
        meta.update({
            "name": name,
            "max_tokens": MAX_TOKENS,
            "sampling": "greedy (T 0), or the whole tempered distribution: top_k 0, top_p 1, min_p 0, no penalties; reference stop strings",
            "made_by": "tools/make_llm_honest_sets.py",
        })
        out = os.path.join(OUT_DIR, f"{name}.json")
        with open(out, "w") as f:
            f.write(json.dumps(meta, ensure_ascii=False)[:-1] + ', "answers": [\n')
            f.write(",\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
            f.write("\n]}\n")
        print(f"wrote {out}: {len(rows)} answers", file=sys.stderr)


if __name__ == "__main__":
    main()
