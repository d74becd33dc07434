#!/usr/bin/env python3
"""Write the llama.cpp reference runs of SmolLM2-135M-Instruct that heurist-inference's tests read.

The independent peer is llama.cpp, through llama-cpp-python. The script makes its own virtual
environment under tools/.venv-llama, installs llama-cpp-python there (it compiles llama.cpp from
source: about 11 minutes on 2 cores), and re-runs itself inside it. Nothing it installs is
committed; the JSON it writes is.

    python3 tools/fetch_smollm2.py          # the model, into the heurist model cache
    python3 tools/make_llama_cpp_fixtures.py

For every chat prompt below it records:
  - the prompt text rendered with the GGUF's own chat template, the way llama-cpp-python's chat
    completion path renders it (Jinja2ChatFormatter over `tokenizer.chat_template`), and its
    token ids as llama.cpp tokenizes it (special tokens parsed; BOS only if the path adds one);
  - greedy decoding (argmax of the raw logits; no temperature, top-k, penalties) for up to
    MAX_TOKENS tokens, stopping at an end-of-generation token, with the detokenized text;
  - at each of the first TOP_STEPS steps, the 5 largest raw logits (ids and values).

llama.cpp runs its plain CPU kernels (no weight repacking, no AMX; see
disable_extra_buffer_types). It does this twice: with llama.cpp's default f16 KV cache, and with an f32 KV cache, which is
the arithmetic candle's quantized llama uses (the difference between the two runs measures how
much of a logit gap is llama.cpp's f16 cache rather than a bug).

Writes heurist-inference/tests/fixtures/llama-cpp/smollm2_greedy.json.
"""
import hashlib
import json
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "tools", ".venv-llama")
OUT = os.path.join(
    ROOT, "heurist-inference", "tests", "fixtures", "llama-cpp", "smollm2_greedy.json"
)
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
NUMPY = "numpy==2.4.6"
N_THREADS = 2
N_CTX = 2048
MAX_TOKENS = 48
TOP_STEPS = 32
TOP_K = 5
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1

LONG_TEXT = (
    "The history of computing is longer than the history of computing hardware and modern "
    "computing technology and includes the history of methods intended for pen and paper or for "
    "chalk and slate, with or without the aid of tables. Digital computing is intimately tied to "
    "the representation of numbers. But long before abstractions like the number arose, there "
    "were mathematical concepts to serve the purposes of civilization. These concepts are "
    "implicit in concrete practices such as one-to-one correspondence, the basis of counting, "
    "comparison to a standard, used for measurement, and the 3-4-5 right triangle, a device for "
    "assuring a right angle. The earliest known tool for use in computation was the abacus, and "
    "it was thought to have been invented in Babylon circa 2700 to 2300 BC. Its original style "
    "of usage was by lines drawn in sand with pebbles. In the 1830s Charles Babbage designed the "
    "Analytical Engine, a mechanical general-purpose computer whose description contained an "
    "arithmetic logic unit, control flow in the form of conditional branching and loops, and "
    "integrated memory. Ada Lovelace wrote what is often called the first computer program for "
    "it, an algorithm to compute Bernoulli numbers. A century later, electronic machines such as "
    "ENIAC and the Manchester Baby replaced gears with vacuum tubes, and the stored-program "
    "idea made software a separate thing from hardware."
)

# Varied on purpose: short, long, multi-turn with a system message, non-ASCII and emoji, code,
# digits (SmolLM2 splits every digit), whitespace runs, a conversation with no system message
# (the template then inserts its default one).
PROMPTS = [
    {"name": "short_question", "messages": [
        {"role": "user", "content": "What is the capital of France?"}]},
    {"name": "greeting", "messages": [
        {"role": "user", "content": "Hi! How are you today?"}]},
    {"name": "long_summary", "messages": [
        {"role": "user", "content": "Summarize the following text in three sentences.\n\n" + LONG_TEXT}]},
    {"name": "multi_turn_system", "messages": [
        {"role": "system", "content": "You are a patient tutor who explains things to children."},
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Sunlight is made of many colors, and the air scatters blue light the most."},
        {"role": "user", "content": "Then why are sunsets red?"}]},
    {"name": "emoji_french", "messages": [
        {"role": "user", "content": "Écris une phrase joyeuse sur le café ☕ et les croissants 🥐, avec des émojis 😀!"}]},
    {"name": "code_python", "messages": [
        {"role": "user", "content": "Write a Python function `is_prime(n)` that returns True when n is prime."}]},
    {"name": "code_rust_explain", "messages": [
        {"role": "system", "content": "You are an expert Rust programmer."},
        {"role": "user", "content": "What does this program print?\n\n```rust\nfn main() {\n    let v: Vec<i32> = (1..=5).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n```"}]},
    {"name": "digits_arithmetic", "messages": [
        {"role": "user", "content": "Compute 12345 + 67890 - 2024 and show each step. Also, what is 3.14159 * 2?"}]},
    {"name": "japanese_chinese", "messages": [
        {"role": "user", "content": "日本の首都はどこですか？请用中文和英文回答。"}]},
    {"name": "whitespace_list", "messages": [
        {"role": "user", "content": "Fix the indentation of this list:\n\n  - red\n\t- green\n      -   blue  \n\nThen name two more colors."}]},
]


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        venv.create(VENV, with_pip=True)
    subprocess.check_call([py, "-m", "pip", "install", "-q", LLAMA_CPP_PYTHON, NUMPY])
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def model_path():
    out = subprocess.check_output([sys.executable, os.path.join(ROOT, "tools", "fetch_smollm2.py")])
    return out.decode().strip().splitlines()[-1]


def top_k(logits, k):
    import numpy as np

    # Stable sort on -logit: ties keep the lower id first, like an argmax scan.
    order = np.argsort(-logits, kind="stable")[:k]
    return [int(i) for i in order], [float(logits[i]) for i in order]


def greedy(llm, prompt_ids):
    import llama_cpp
    import numpy as np

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    llm.reset()
    llm.eval(prompt_ids)
    tokens, top_ids, top_logits = [], [], []
    for step in range(MAX_TOKENS):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        token = int(np.argmax(logits))
        if step < TOP_STEPS:
            ids, values = top_k(logits, TOP_K)
            top_ids.append(ids)
            top_logits.append(values)
        tokens.append(token)
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llm.eval([token])
    return tokens, top_ids, top_logits


def disable_extra_buffer_types():
    """Run llama.cpp's plain CPU kernels, without weight repacking or AMX.

    On the machine these fixtures were made on (AVX-512 + AMX), llama.cpp's AMX matmul segfaults
    in the first decode, and which "extra buffer type" runs depends on the CPU anyway; without
    them every x86-64 machine computes the same reference (Q4_1 weights times Q8_1-quantized
    activations, the scheme candle also uses). llama-cpp-python does not expose the flag, so
    the default model parameters are patched.
    """
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params
    if getattr(default, "heurist_patched", False):
        return

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    params.heurist_patched = True
    lib.llama_model_default_params = params


def load(path, kv_type):
    disable_extra_buffer_types()
    from llama_cpp import Llama

    return Llama(
        model_path=path,
        n_ctx=N_CTX,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        type_k=kv_type,
        type_v=kv_type,
        verbose=False,
    )


def main():
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    path = model_path()
    with open(path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()

    llm = load(path, GGML_TYPE_F16)
    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )

    cases = []
    for prompt in PROMPTS:
        rendered = formatter(messages=prompt["messages"])
        # llama-cpp-python's chat completion path: add BOS only if the template did not.
        prompt_ids = llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        tokens, top_ids, top_logits = greedy(llm, prompt_ids)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        shown = [t for t in tokens if not llama_cpp.llama_vocab_is_eog(vocab, t)]
        text = llm.detokenize(shown).decode("utf-8", errors="replace")
        cases.append({
            "name": prompt["name"],
            "messages": prompt["messages"],
            "rendered_prompt": rendered.prompt,
            "prompt_token_ids": prompt_ids,
            "completion_token_ids": tokens,
            "completion_text": text,
            "top_token_ids": top_ids,
            "top_logits": top_logits,
        })
        print(f"{prompt['name']}: {len(prompt_ids)} prompt tokens, {len(tokens)} generated: {text[:60]!r}",
              file=sys.stderr)
    del llm

    # The same runs with an f32 KV cache (kept to the fields that can differ).
    llm = load(path, GGML_TYPE_F32)
    for case in cases:
        tokens, top_ids, top_logits = greedy(llm, case["prompt_token_ids"])
        case["kv_f32"] = {
            "completion_token_ids": tokens,
            "top_token_ids": top_ids,
            "top_logits": top_logits,
        }
    del llm

    fixture = {
        "source": {
            "tool": "llama-cpp-python",
            "version": llama_cpp.__version__,
            "command": "python3 tools/make_llama_cpp_fixtures.py",
            "model_file": os.path.basename(path),
            "model_sha256": sha256,
            "n_threads": N_THREADS,
            "n_ctx": N_CTX,
            "kv_cache": "f16 (llama.cpp default); kv_f32 repeats the run with an f32 KV cache",
            "extra_buffer_types": "off (use_extra_bufts=false: no weight repacking, no AMX)",
            "flash_attn": False,
            "decoding": "greedy: argmax of raw logits, no temperature/top-k/penalties; stop at EOG",
            "max_tokens": MAX_TOKENS,
            "top_steps": TOP_STEPS,
            "top_k": TOP_K,
        },
        "chat_template": template,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(OUT)


if __name__ == "__main__":
    ensure_venv()
    main()
