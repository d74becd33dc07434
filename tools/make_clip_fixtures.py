#!/usr/bin/env python3
"""Write the CLIP tokenizer and prompt-weighting reference data that heurist-inference reads.

The independent peers:
  - transformers 4.44.2's (slow, Python) `CLIPTokenizer`, the class the reference miner's
    pipelines load. It is built here from the BPE vocabulary embedded in heurist-inference
    (heurist-inference/data/clip/bpe_simple_vocab_16e6.txt.gz, the file that ships in the
    open-clip-torch package), turned into the vocab.json / merges.txt pair that
    openai/clip-vit-large-patch14 publishes, since these machines have no model hub access.
    ftfy must NOT be importable: the miner's requirements do not install it, and without it
    CLIPTokenizer cleans text with its BasicTokenizer (which is what heurist reproduces).
  - the reference SD miner's long-prompt-weighting pipelines, vendor/lpw_stable_diffusion.py
    (SD 1.5) and vendor/lpw_stable_diffusion_xl.py (SDXL) of heurist-network/miner-release.
    They are imported from a checkout or git mirror given on the command line (never copied
    into this repository); the commit is recorded in the fixtures.

    python3 tools/make_clip_fixtures.py --miner-repo PATH [--commit REV]

PATH is a checkout or a bare mirror of heurist-network/miner-release (for example the one the
`fetch` tool makes). The script reuses tools/.venv-image (torch 2.4.0, diffusers 0.30.2,
transformers 4.44.2, the miner's pins) and re-runs itself inside it.

Writes, under heurist-inference/tests/fixtures/clip/:
  tokens.json   token ids of 142 texts (every prompt and negative prompt of the real job
                examples, plus unicode, punctuation, numbers, control characters, very long
                texts): unpadded ids, and ids padded/truncated to 77 with the SD 1.5 tokenizer
                (pad = <|endoftext|>) and with SDXL's second tokenizer (pad = "!").
  weights.json  parse_prompt_attention pairs and per-token (ids, weights) for both pipelines'
                parsers, for 40 weighted prompts (nested, escaped, BREAK, long, bad weights).
  chunks.json   whole prompt/negative pairs through the pipelines' own embedding functions with
                fake, seeded text encoders (hidden sizes 4; 2 and 3): the id chunks each encoder
                received, the padded weights, the encoders' outputs and the re-weighted
                embeddings the pipeline returned, in f32 and f16; tensors as
                concatenated hex f32 bit patterns (8 characters a value).
"""
import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "tools", ".venv-image")
OUT = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "clip")
VOCAB_GZ = os.path.join(ROOT, "heurist-inference", "data", "clip", "bpe_simple_vocab_16e6.txt.gz")
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
EXAMPLES = os.path.join(ROOT, "..", "shared", "reference", "heurist-models", "examples")
PINS = ["torch==2.4.0", "diffusers==0.30.2", "transformers==4.44.2", "numpy==1.26.4"]
LPW_FILES = ["vendor/lpw_stable_diffusion.py", "vendor/lpw_stable_diffusion_xl.py"]


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def bootstrap():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        import venv

        venv.create(VENV, with_pip=True)
    subprocess.check_call([py, "-m", "pip", "install", "--quiet", *PINS])
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


# --- the vocabulary, as openai/clip-vit-large-patch14's vocab.json and merges.txt ---


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_vocab_files(tmp):
    raw = open(VOCAB_GZ, "rb").read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != VOCAB_SHA256:
        sys.exit(f"{VOCAB_GZ}: sha256 {digest}, expected {VOCAB_SHA256}")
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path = os.path.join(tmp, "vocab.json")
    merges_path = os.path.join(tmp, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def make_tokenizers(tmp):
    try:
        import ftfy  # noqa: F401

        sys.exit("ftfy is installed in the venv; the reference miner runs without it. pip uninstall ftfy")
    except ImportError:
        pass
    from transformers import CLIPTokenizer

    vocab_path, merges_path = write_vocab_files(tmp)
    # SD 1.5's tokenizer (and SDXL's first): openai/clip-vit-large-patch14's config.
    tok1 = CLIPTokenizer(vocab_path, merges_path, model_max_length=77)
    # SDXL's second tokenizer (laion/CLIP-ViT-bigG-14 in diffusers' layout) pads with "!".
    tok2 = CLIPTokenizer(vocab_path, merges_path, model_max_length=77, pad_token="!")
    assert tok1.fix_text is None and tok2.fix_text is None
    assert len(tok1) == 49408 and tok1.bos_token_id == 49406 and tok1.eos_token_id == 49407
    assert tok1.pad_token_id == 49407 and tok2.pad_token_id == 0
    return tok1, tok2


# --- the reference pipelines ---


def load_reference(repo, rev, tmp):
    """Imports the two lpw modules of miner-release at `rev` from a checkout or mirror."""
    commit = subprocess.check_output(["git", "-C", repo, "rev-parse", rev], text=True).strip()
    modules = {}
    for path in LPW_FILES:
        source = subprocess.check_output(["git", "-C", repo, "show", f"{commit}:{path}"])
        dest = os.path.join(tmp, os.path.basename(path))
        with open(dest, "wb") as f:
            f.write(source)
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, dest)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    return commit, modules["lpw_stable_diffusion"], modules["lpw_stable_diffusion_xl"]


# --- texts ---


def example_texts():
    texts = []
    for name in sorted(os.listdir(EXAMPLES)):
        with open(os.path.join(EXAMPLES, name)) as f:
            job = json.load(f)
        for key in ("prompt", "neg_prompt"):
            text = job.get(key)
            if isinstance(text, str) and text not in texts:
                texts.append(text)
    return texts


LONG_PROSE = (
    "A breathtaking panoramic view of an ancient mountain monastery at dawn, golden light "
    "spilling over terraced rice fields, mist curling around stone stairways, prayer flags "
    "fluttering in the wind, a lone monk in saffron robes carrying a lantern, intricate wooden "
    "carvings on the gates, distant snow-capped peaks, volumetric fog, cinematic composition, "
    "ultra detailed, 8k resolution, shot on a medium format camera with a 45mm lens, f/8, "
    "award-winning travel photography, rich colour grading, soft shadows, high dynamic range, "
    "masterpiece, trending on artstation, by greg rutkowski and studio ghibli"
)

TOKEN_TEXTS = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "hello, world!!! ...what?? (yes) [no] {maybe} <tag>",
    "it's a dog's life; we'll see, they're here, I'm sure, you've got it, he'd go, don't",
    "IT'S ALL CAPS DON'T",
    "1234567890 3.14159 1,000,000 2024-07-01 v1.5 sdxl1.0 4k 8K",
    "café naïve résumé Ångström",
    "e\u0301 combining acute, n\u0303 tilde",
    "東京タワー の 夜景、美しい",
    "한국어 프롬프트 테스트",
    "Привет, мир! Ёлка",
    "ΟΔΟΣ σοφός ΣΟΦΟΣ",
    "emoji 🐱🚀✨ and 👨‍👩‍👧 family",
    "tabs\tand\nnewlines\r\n   many   spaces  ",
    "zero\u200bwidth\u200dspace and soft\u00adhyphen",
    "control\x07bell\x1bescape\x00nul",
    "nbsp\u00a0here and\u3000ideographic space",
    "line\u2028separator\u2029paragraph",
    "<|endoftext|>in text <|startoftext|>",
    "<|ENDOFTEXT|> upper case special",
    "!!<|endoftext|> and ab<|endoftext|>cd",
    "masterpiece, best quality, (ultra-detailed:1.2), 8k, [blurry], \\(escaped\\)",
    "ﬁ ligature and Ⅻ roman numeral and ½ fraction",
    "İstanbul and Straße and ǅ titlecase",
    "full-width ＡＢＣ １２３ and math 𝟘𝟙𝟚",
    "private \ue000 use and replacement \ufffd char",
    "arabic مرحبا بالعالم and hebrew שלום",
    "hindi नमस्ते दुनिया",
    "thai สวัสดีชาวโลก",
    "Kelvin \u212a and long s \u017f's",
    "'s 't 're 've 'm 'll 'd '' ' s",
    "$100 @user #hashtag 50% a&b a+b=c a/b a\\b a|b ~tilde^ `tick`",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 500,
    LONG_PROSE,
    (LONG_PROSE + " ") * 3,
]

WEIGHT_TEXTS = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    "\\(literal\\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "[[[faded]]] ((bold)) (x:0) (y:-1.5) (z:+2)",
    "(a:1.2) (b:.5) (c:1.) (d:007)",
    "escape \\\\ backslash \\ lone \\x and trailing \\",
    "unmatched ) and ] closers ]]",
    "weight outside :1.2) bracket and (inside:1.2) one",
    "colon: inside (a:b) text and (c : 1.5) spaced",
    "nested ((a [b (c:1.5) d] e)) f",
    "red cat BREAK blue dog",
    "(red BREAK blue:1.3)",
    "BREAKfast is not a break, nor is xBREAK or BREAK_",
    "a, BREAK,b BREAK",
    "BREAK",
    "break lower case BREAK\tBREAK\nBREAK",
    "(",
    ")",
    "[]",
    "()",
    ":",
    "(:1.5)",
    "((( open",
    "[[ open square",
    "(mixed [brackets) close]",
    "(東京:1.2) [タワー] 夜景",
    "(word:１.５) fullwidth digits",
    "(photorealistic:1.4), ((monochrome)), [[lowres]], (worst quality:2)",
    "(red:1.5) cat, " * 40,
    "((masterpiece)), best quality, " * 30 + "(end:1.3)",
    "[" + LONG_PROSE + "] (" + LONG_PROSE + ":1.25)",
    "(word:1.2.3)",
    "(word:.)",
    "outside (word:1.2.3 is fine when not closed",
    "(a) (b) (a) same weights merge",
    "(a:1.1) (b) float equal?",
    "wow!!! (so good!:1.3) !?",
]

# Pairs (prompt, negative) for whole-pipeline chunking. Token counts in the names are rough.
CHUNK_PAIRS = [
    ("a photo of a cat", "blurry"),
    ("an (important) word", ""),
    ("", ""),
    ("(red:1.5) cat, " * 20, "lowres, [bad] anatomy"),
    ("(red:1.5) cat, " * 40, "(ugly:1.3), " * 30),
    ("((masterpiece)), best quality, " * 40 + "(end:1.3)", "(worst quality:2), " * 25),
    ("word " * 75, "(word:1.2) " * 150),
    ("short", "(a (b [c] d) e:1.2), " * 60),
    ("hello! (wow:1.2)!", "(a long negative prompt, " * 5 + "bad:1.1)"),
    ("wow!!! amazing!?", "bad"),
]


# --- recording ---


def tokens_fixture(tok1, tok2):
    texts = example_texts() + TOKEN_TEXTS
    cases = []
    for text in texts:
        cases.append(
            {
                "text": text,
                "ids": tok1(text).input_ids,
                # The second tokenizer's pad token "!" is a special token: transformers splits
                # every "!" out of the text before BPE, so its ids differ around "!".
                "ids_sdxl2": tok2(text).input_ids,
                "padded_sd15": tok1(text, padding="max_length", max_length=77, truncation=True).input_ids,
                "padded_sdxl2": tok2(text, padding="max_length", max_length=77, truncation=True).input_ids,
            }
        )
    return cases


def weights_fixture(tok1, tok2, lpw15, lpwxl):
    pipe = types.SimpleNamespace(tokenizer=tok1)
    cases = []
    for text in WEIGHT_TEXTS:
        case = {"text": text}
        for key, module in (("sd15", lpw15), ("sdxl", lpwxl)):
            try:
                pairs = module.parse_prompt_attention(text)
            except ValueError as e:
                case[key] = {"error": str(e)}
                continue
            if key == "sd15":
                # max_length 225 = (77 - 2) * max_embeddings_multiples (3), as the pipeline passes.
                ids, weights = module.get_prompts_with_weights(pipe, [text], 225)
                ids, weights = ids[0], weights[0]
            else:
                ids, weights = module.get_prompts_tokens_with_weights(tok1, text)
            case[key] = {"pairs": pairs, "ids": ids, "weights": weights}
            if key == "sdxl":
                ids2, weights2 = module.get_prompts_tokens_with_weights(tok2, text)
                case[key].update({"ids_2": ids2, "weights_2": weights2})
        cases.append(case)
    return cases


def tensor_list(t):
    """f32 bit patterns as hex (f16 values widened exactly): exact and half the size of decimals."""
    import numpy as np

    bits = t.detach().float().reshape(-1).numpy().view(np.uint32)
    return "".join(f"{int(b):08x}" for b in bits)


def sd15_encoder(torch, g, hidden, dtype, calls):
    """A fake CLIPTextModel: fresh seeded normals [1, n, hidden] per call; records its inputs."""

    def run(ids):
        h = torch.randn(1, ids.shape[1], hidden, generator=g).to(dtype)
        calls.append({"ids": ids[0].tolist(), "hidden": tensor_list(h)})
        # A clone: the pipeline scales its embeddings in place.
        return (h.clone(),)

    return run


class HiddenOut:
    """A fake CLIPTextModel(WithProjection) output: hidden_states[-2] and [0] (pooled)."""

    def __init__(self, hidden, pooled):
        self.hidden_states = [None, hidden, None]
        self._pooled = pooled

    def __getitem__(self, i):
        assert i == 0
        return self._pooled


def chunks_fixture(torch, tok1, tok2, lpw15, lpwxl):
    out = {"sd15": [], "sdxl": []}
    for dtype_name, dtype in (("f32", torch.float32), ("f16", torch.float16)):
        # f16 (the miner's dtype) on the shorter pairs only, to keep the file small.
        pairs = CHUNK_PAIRS if dtype_name == "f32" else CHUNK_PAIRS[:5]
        for prompt, negative in pairs:
            # --- SD 1.5: get_weighted_text_embeddings with the pipeline's defaults ---
            g = torch.Generator().manual_seed(1234)
            calls = []
            padded = []
            original_pad = lpw15.pad_tokens_and_weights

            def recording_pad(*args, **kwargs):
                tokens, weights = original_pad(*args, **kwargs)
                padded.append({"tokens": [list(t) for t in tokens], "weights": [list(w) for w in weights]})
                return tokens, weights

            lpw15.pad_tokens_and_weights = recording_pad
            pipe = types.SimpleNamespace(
                tokenizer=tok1, device="cpu", text_encoder=sd15_encoder(torch, g, 4, dtype, calls)
            )
            try:
                cond, uncond = lpw15.get_weighted_text_embeddings(
                    pipe, prompt=prompt, uncond_prompt=negative, max_embeddings_multiples=3
                )
            finally:
                lpw15.pad_tokens_and_weights = original_pad
            out["sd15"].append(
                {
                    "dtype": dtype_name,
                    "prompt": prompt,
                    "negative": negative,
                    "encoder_calls": calls,
                    "padded": padded,
                    "prompt_embeds": {"shape": list(cond.shape), "values": tensor_list(cond)},
                    "negative_embeds": {"shape": list(uncond.shape), "values": tensor_list(uncond)},
                }
            )

            # --- SDXL: get_weighted_text_embeddings_sdxl ---
            g = torch.Generator().manual_seed(5678)
            calls1, calls2, groups = [], [], []

            def encoder(calls, hidden, pooled):
                def run(ids, output_hidden_states=False):
                    n = ids.shape[1]
                    h = torch.randn(1, n, hidden, generator=g).to(dtype)
                    p = torch.randn(1, pooled, generator=g).to(dtype)
                    calls.append({"ids": ids[0].tolist(), "hidden": tensor_list(h)})
                    return HiddenOut(h.clone(), p)

                return run

            original_group = lpwxl.group_tokens_and_weights

            def recording_group(token_ids, weights, pad_last_block=False):
                t, w = original_group(token_ids, weights, pad_last_block)
                groups.append({"tokens": t, "weights": w})
                return t, w

            lpwxl.group_tokens_and_weights = recording_group
            pipe = types.SimpleNamespace(
                tokenizer=tok1,
                tokenizer_2=tok2,
                text_encoder=encoder(calls1, 2, 3),
                text_encoder_2=encoder(calls2, 3, 4),
            )
            case = {"dtype": dtype_name, "prompt": prompt, "negative": negative}
            try:
                embeds, neg_embeds, _, _ = lpwxl.get_weighted_text_embeddings_sdxl(
                    pipe, prompt=prompt, neg_prompt=negative, device="cpu"
                )
                case.update(
                    {
                        "encoder1_calls": calls1,
                        "encoder2_calls": calls2,
                        # groups: prompt (tokenizer 1), negative (1), prompt (2), negative (2)
                        "groups": groups,
                        "prompt_embeds": {"shape": list(embeds.shape), "values": tensor_list(embeds)},
                        "negative_embeds": {"shape": list(neg_embeds.shape), "values": tensor_list(neg_embeds)},
                    }
                )
            except RuntimeError as e:
                case["error"] = str(e)
            finally:
                lpwxl.group_tokens_and_weights = original_group
            out["sdxl"].append(case)
    return out


def write(name, obj):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--miner-repo", required=True, help="checkout or mirror of heurist-network/miner-release")
    parser.add_argument("--commit", default="HEAD", help="revision of the miner to import (default HEAD)")
    args = parser.parse_args()
    if not in_venv():
        bootstrap()
    import torch
    import transformers

    with tempfile.TemporaryDirectory(prefix="heurist-clip-") as tmp:
        tok1, tok2 = make_tokenizers(tmp)
        commit, lpw15, lpwxl = load_reference(os.path.abspath(args.miner_repo), args.commit, tmp)
        source = {
            "tokenizer": f"transformers {transformers.__version__} CLIPTokenizer (slow, no ftfy)",
            "vocabulary": f"open-clip-torch 2.26.1 open_clip/bpe_simple_vocab_16e6.txt.gz sha256 {VOCAB_SHA256}",
            "reference": f"heurist-network/miner-release {commit} {' '.join(LPW_FILES)}",
            "torch": torch.__version__,
        }
        write("tokens.json", {"source": source, "cases": tokens_fixture(tok1, tok2)})
        write("weights.json", {"source": source, "cases": weights_fixture(tok1, tok2, lpw15, lpwxl)})
        write("chunks.json", {"source": source, **chunks_fixture(torch, tok1, tok2, lpw15, lpwxl)})


if __name__ == "__main__":
    main()
