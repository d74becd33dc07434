#!/usr/bin/env python3
"""What transformers computes in f32 for the tiny chat checkpoints stored in bf16.

Many chat models ship in bf16. On a CPU without native bf16 arithmetic, heurist-inference runs a
safetensors model in f32 by default (`ComputeDType::Auto`), as transformers does when it loads a
model with `torch_dtype=torch.float32`: the bf16 weights are widened exactly and every product
and sum is f32. This script records the peer's answer for that case: the committed tiny f32
models of tools/make_transformers_fixtures.py (llama3, mistral, mixtral) with every weight rounded
to bf16 (torch's round-to-nearest-even, the same as candle's), run by transformers 4.44.2 in
float32 with eager attention: 16 greedy tokens after each case's prompt (argmax, no end-of-sequence
stop) and the smallest gap between the best and second-best logit on the way. For contrast it also
records the greedy tokens of the same weights run in bf16, which part from the f32 ones.

    tools/.venv-tf/bin/python tools/make_bf16_greedy_fixtures.py

(any venv with torch 2.4.0 and transformers 4.44.2: .venv-tf, .venv-image). Writes
heurist-inference/tests/fixtures/transformers/bf16_weights_greedy.json.
"""
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "transformers")
MODELS = ["llama3", "mistral", "mixtral"]
STEPS = 16


def greedy(model, ids):
    out, margin = [], float("inf")
    seq = list(ids)
    with torch.no_grad():
        for _ in range(STEPS):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            top = torch.topk(logits, 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            out.append(nxt)
            seq.append(nxt)
    return out, margin


def main():
    torch.set_num_threads(2)
    cases = json.load(open(os.path.join(FIXTURES, "models.json")))
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}
    for name in MODELS:
        path = os.path.join(FIXTURES, "models", name)
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                                     attn_implementation="eager")
        model.eval()
        # Every weight as a bf16 checkpoint stores it, then widened back: exact.
        model = model.to(torch.bfloat16)
        half = [greedy(model, c["prompt_token_ids"])[0] for c in cases[name]["cases"]]
        model = model.to(torch.float32)
        rows = []
        for case, bf16_tokens in zip(cases[name]["cases"], half):
            tokens, margin = greedy(model, case["prompt_token_ids"])
            rows.append({"prompt_token_ids": case["prompt_token_ids"], "greedy_token_ids": tokens,
                         "greedy_min_top2_margin": round(margin, 6),
                         "bf16_compute_greedy_token_ids": bf16_tokens})
        out["models"][name] = rows
        differ = sum(r["greedy_token_ids"] != r["bf16_compute_greedy_token_ids"] for r in rows)
        print(f"{name}: {len(rows)} prompts, bf16 compute departs from f32 on {differ}")
    path = os.path.join(FIXTURES, "bf16_weights_greedy.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(path)


if __name__ == "__main__":
    main()
