#!/usr/bin/env python3
"""Write the independent reference for the hidden states heurist-inference's CPU body reports on
SmolLM2-135M-Instruct Q4_1 (tests/it/hidden_states.rs): transformers' LlamaForCausalLM running
the GGUF file's own weights, dequantised to float32, with output_hidden_states.

transformers 4.44's own GGUF loader (`from_pretrained(gguf_file=...)`) has no Q4_1, so this script
does what it does for the types it has: read the tensors with gguf-py, dequantise them
(gguf.quants.dequantize), undo the Q/K row permutation llama.cpp's converter applies
(transformers' `_reverse_permute_weights`), and load them into a LlamaForCausalLM whose config
comes from the GGUF metadata. The run is eager attention, float32, on the CPU; the only
difference from our body is that we (like llama.cpp) round every matmul input to 8 bits per
block of 32 (Q8_0 / Q8_1), which the test's tolerance accounts for.

Prompts are those of tests/fixtures/llama-cpp/smollm2_greedy.json (their token ids, and the first
completion tokens llama.cpp chose), so the test can score the same tokens.

    tools/.venv-image/bin/pip install --no-deps gguf==0.17.1   # once; numpy is already there
    python3 tools/fetch_smollm2.py
    tools/.venv-image/bin/python tools/make_gguf_hidden_fixtures.py

It writes heurist-inference/tests/fixtures/transformers/smollm2_hidden_states.json: per case the
prompt and completion ids and, for each of the first STEPS completion tokens (the position whose
logits scored it), the hidden states at LAYERS (0 = embeddings, 30 = after the final norm).
"""
import importlib.metadata
import json
import os

import gguf
import numpy as np
import torch
import transformers
from gguf.quants import dequantize
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "transformers", "smollm2_hidden_states.json")
LLAMA_CPP = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "llama-cpp", "smollm2_greedy.json")
MODEL_DIR = os.environ.get("HEURIST_MODEL_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "heurist", "models")
MODEL = os.path.join(MODEL_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")
CASES = 2
STEPS = 3
LAYERS = [0, 1, 15, 30]


def field(reader, key):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return value.tobytes().decode() if f.types[0] == gguf.GGUFValueType.STRING else value.item()


def reverse_permute(w, n_head):
    """transformers' _reverse_permute_weights: llama.cpp interleaves each head's two RoPE
    halves; Hugging Face keeps them apart."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def load_model():
    reader = gguf.GGUFReader(MODEL)
    assert field(reader, "general.architecture") == "llama"
    heads = field(reader, "llama.attention.head_count")
    kv_heads = field(reader, "llama.attention.head_count_kv")
    tensors = {t.name: torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)) for t in reader.tensors}
    layers = field(reader, "llama.block_count")
    config = LlamaConfig(
        vocab_size=tensors["token_embd.weight"].shape[0],
        hidden_size=field(reader, "llama.embedding_length"),
        intermediate_size=field(reader, "llama.feed_forward_length"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rms_norm_eps=field(reader, "llama.attention.layer_norm_rms_epsilon"),
        rope_theta=field(reader, "llama.rope.freq_base"),
        max_position_embeddings=field(reader, "llama.context_length"),
        tie_word_embeddings="output.weight" not in tensors,
        attn_implementation="eager",
    )
    state = {"model.embed_tokens.weight": tensors["token_embd.weight"], "model.norm.weight": tensors["output_norm.weight"]}
    if "output.weight" in tensors:
        state["lm_head.weight"] = tensors["output.weight"]
    names = {
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    for i in range(layers):
        p, q = f"blk.{i}", f"model.layers.{i}"
        state[f"{q}.self_attn.q_proj.weight"] = reverse_permute(tensors[f"{p}.attn_q.weight"], heads)
        state[f"{q}.self_attn.k_proj.weight"] = reverse_permute(tensors[f"{p}.attn_k.weight"], kv_heads)
        for ours, theirs in names.items():
            state[f"{q}.{theirs}.weight"] = tensors[f"{p}.{ours}.weight"]
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.eval()


@torch.no_grad()
def main():
    torch.manual_seed(0)
    model = load_model()
    with open(LLAMA_CPP) as f:
        llama_cpp = json.load(f)
    cases = []
    for case in llama_cpp["cases"][:CASES]:
        prompt, completion = case["prompt_token_ids"], case["completion_token_ids"][:STEPS]
        out = model(torch.tensor([prompt + completion[:-1]]), output_hidden_states=True)
        first = len(prompt) - 1
        states = [
            [[round(float(v), 7) for v in out.hidden_states[layer][0, first + step]] for layer in LAYERS]
            for step in range(STEPS)
        ]
        # The logits agree with llama.cpp's choices (within a near tie: its activations are
        # rounded to 8 bits): the weights were read right.
        for step, token in enumerate(completion):
            logits = out.logits[0, first + step]
            gap = float(logits.max() - logits[token])
            assert gap < 0.5, (case["name"], step, token, gap)
        cases.append(
            {
                "name": case["name"],
                "messages": case["messages"],
                "prompt_token_ids": prompt,
                "completion_token_ids": completion,
                "hidden_states": states,
            }
        )
    with open(OUT, "w") as f:
        json.dump({"layers": LAYERS, "cases": cases}, f, separators=(",", ":"))
    print("transformers", transformers.__version__, "torch", torch.__version__, "gguf", importlib.metadata.version("gguf"))


if __name__ == "__main__":
    main()
