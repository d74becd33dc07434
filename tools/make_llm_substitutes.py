#!/usr/bin/env python3
"""Substitute models for heurist-verify's detection table: SmolLM2 made subtly wrong.

A cheating miner may claim SmolLM2-135M-Instruct while running something cheaper or
different. The detection table (heurist-verify/examples/detection_table.rs) asks whether the
LLM checks catch answers from such substitutes. This script makes three of them from the real
Q4_1 GGUF, with gguf-py (the GGUF reader/writer and block quantisers that ship with
llama.cpp), not with our own GGUF code, so a bug in heurist-inference's loader cannot make a
substitute look like the original:

- perturbed: every matmul weight (the Q4_1 blocks and the Q8_0 embedding) dequantised, gaussian
  noise added with sigma = SIGMA_REL times each row's RMS, and re-quantised to its own type.
  The RMS norm vectors (F32) are left alone.
- requant3: every Q4_1 weight dequantised and re-quantised on 8 levels per block of 32 (3-bit,
  min/scale per block as Q4_1 has), stored as Q4_1 blocks that only use the codes 0..7, so our
  fast Q4_1 kernels serve it. The result is checked against gguf-py's own Q4_1 dequantiser.
- drop2: blocks DROPPED removed, the later blocks renumbered, `llama.block_count` lowered.

Every other key (tokenizer, chat template, hyper-parameters) is copied unchanged. The files go
to `$HEURIST_MODEL_DIR/substitutes/` (else `~/.cache/heurist/models/substitutes/`) and are
not committed: about 100 MB each.

    python3 tools/fetch_smollm2.py
    python3 -m venv tools/.venv && tools/.venv/bin/pip install gguf==0.19.0
    tools/.venv/bin/python tools/make_llm_substitutes.py

The noise and level count are fixed (seeded), so a rerun writes the same files.
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIGMA_REL = 0.05
LEVELS = 8
DROPPED = (10, 20)
SEED = 9
Q4_1 = GGMLQuantizationType.Q4_1
Q8_0 = GGMLQuantizationType.Q8_0
F32 = GGMLQuantizationType.F32


def model_dir():
    return os.environ.get("HEURIST_MODEL_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "heurist", "models")


def out_dir():
    return os.path.join(model_dir(), "substitutes")


def copy_fields(reader, writer, block_count=None):
    """Copies every key but the file's own bookkeeping; `block_count` overrides the layer count."""
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        if name == "llama.block_count" and block_count is not None:
            writer.add_key_value(name, block_count, vtype)
            continue
        if vtype == GGUFValueType.ARRAY:
            sub = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
        else:
            writer.add_key_value(name, field.contents(), vtype)


def raw_shape(tensor):
    """The byte shape of a tensor's data as gguf-py reads it (rows, bytes per row)."""
    return tensor.data.shape


def pack_q4_1(d16, m16, codes):
    """Q4_1 blocks: f16 scale, f16 minimum, 32 four-bit codes (low nibbles first half)."""
    n = codes.shape[0]
    codes = codes.reshape(n, 2, 16)
    qs = codes[:, 0, :] | (codes[:, 1, :] << np.uint8(4))
    return np.concatenate([d16.reshape(n, 1).view(np.uint8), m16.reshape(n, 1).view(np.uint8), qs], axis=1)


def requantise_levels(weights, levels):
    """`weights` (rows, cols) on `levels` levels per block of 32, as Q4_1 bytes (rows, bytes)."""
    rows, cols = weights.shape
    blocks = weights.reshape(-1, 32).astype(np.float32)
    lo = blocks.min(axis=1)
    hi = blocks.max(axis=1)
    d16 = ((hi - lo) / (levels - 1)).astype(np.float16)
    m16 = lo.astype(np.float16)
    d = d16.astype(np.float32)[:, None]
    m = m16.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(d == 0, 0, np.rint((blocks - m) / d))
    codes = np.clip(codes, 0, levels - 1).astype(np.uint8)
    packed = pack_q4_1(d16, m16, codes).reshape(rows, -1)
    # gguf-py's dequantiser must read back exactly the levels written.
    back = dequantize(packed, Q4_1).reshape(-1, 32)
    want = d * codes.astype(np.float32) + m
    if not np.array_equal(back, want):
        raise SystemExit("Q4_1 packing does not read back as written")
    return packed


def perturb(weights, rng):
    """`weights` plus gaussian noise of SIGMA_REL times each row's RMS."""
    rms = np.sqrt(np.mean(np.square(weights, dtype=np.float64), axis=1, keepdims=True))
    noise = rng.standard_normal(weights.shape) * (SIGMA_REL * rms)
    return (weights + noise).astype(np.float32)


def dequantised(tensor):
    return dequantize(tensor.data, tensor.tensor_type).astype(np.float32)


def write(reader, path, tensors, block_count=None):
    writer = GGUFWriter(path, "llama")
    copy_fields(reader, writer, block_count)
    for name, data, qtype in tensors:
        writer.add_tensor(name, data, raw_shape=data.shape if qtype == F32 else None, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(path, os.path.getsize(path), "bytes", file=sys.stderr)


def main():
    src = os.path.join(model_dir(), FILE_NAME)
    if not os.path.isfile(src):
        raise SystemExit(f"{src} is missing: run python3 tools/fetch_smollm2.py first")
    reader = GGUFReader(src)
    os.makedirs(out_dir(), exist_ok=True)
    base = FILE_NAME.removesuffix(".Q4_1.gguf")

    rng = np.random.default_rng(SEED)
    perturbed, requant, dropped = [], [], []
    for t in reader.tensors:
        qtype = t.tensor_type
        if qtype == F32:
            data = np.array(t.data, dtype=np.float32)
            perturbed.append((t.name, data, qtype))
            requant.append((t.name, data, qtype))
        elif qtype in (Q4_1, Q8_0):
            w = dequantised(t)
            perturbed.append((t.name, quantize(perturb(w, rng), qtype), qtype))
            if qtype == Q4_1:
                requant.append((t.name, requantise_levels(w, LEVELS), qtype))
            else:
                requant.append((t.name, np.array(t.data), qtype))
        else:
            raise SystemExit(f"{t.name}: unexpected tensor type {qtype.name}")

        parts = t.name.split(".")
        if parts[0] == "blk":
            layer = int(parts[1])
            if layer in DROPPED:
                continue
            parts[1] = str(layer - sum(1 for d in DROPPED if d < layer))
        data = np.array(t.data, dtype=np.float32) if qtype == F32 else np.array(t.data)
        dropped.append((".".join(parts), data, qtype))

    blocks = int(reader.fields["llama.block_count"].contents())
    write(reader, os.path.join(out_dir(), f"{base}.perturbed.Q4_1.gguf"), perturbed)
    write(reader, os.path.join(out_dir(), f"{base}.requant3.Q4_1.gguf"), requant)
    write(reader, os.path.join(out_dir(), f"{base}.drop2.Q4_1.gguf"), dropped, block_count=blocks - len(DROPPED))


if __name__ == "__main__":
    main()
