"""Tool jobs whose parameter schemas are not in alphabetical order, rendered by transformers.

Writes heurist-verify/tests/fixtures/tool_order.json: for the chat templates of
dolphin-2.9-llama3-8b, openhermes-mixtral-8x7b-gptq and openhermes-2-pro-mistral-7b (its
`default` template and its `tool_use` one, which transformers picks when a request passes
tools), a chat job as the network sends it (`prompt` and `tools` as JSON text, keys in a
non-alphabetical order) and `apply_chat_template(messages, tools=..., tokenize=False,
add_generation_prompt=True)` of it. The Rust test turns the job into the engine's request
through the protocol and heurist-verify's `chat_request`, renders it with the engine's template
code, and must get the same text: a key order lost on the way changes the prompt vLLM sees.

Needs only transformers 4.44.2 and Jinja2 (no torch): the templates are rendered through a
tokenizer made here from a one-word vocabulary. Set up the venv with

    python3 -m venv tools/.venv-tf
    tools/.venv-tf/bin/pip install transformers==4.44.2 jinja2

and run `tools/.venv-tf/bin/python tools/make_tool_order_fixtures.py` from the workspace root.
The template strings are read from tools/make_transformers_fixtures.py (one copy of each).
"""

import ast
import json
import os

import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "heurist-verify", "tests", "fixtures", "tool_order.json")


def template_strings():
    """The template constants of make_transformers_fixtures.py, read without running it."""
    path = os.path.join(ROOT, "tools", "make_transformers_fixtures.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    wanted = {"DOLPHIN_LLAMA3", "HERMES_2_PRO_MISTRAL", "OPENHERMES_MIXTRAL", "HERMES_2_PRO_TOOL_USE"}
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", None) in wanted:
            out[node.targets[0].id] = ast.literal_eval(node.value)
    assert set(out) == wanted, set(out)
    return out


# Keys deliberately out of alphabetical order at every level: a renderer that sorts them, or a
# JSON map that does, gives another prompt.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "book_table",
            "parameters": {
                "type": "object",
                "properties": {
                    "zone": {"type": "string", "description": "Terrace or inside"},
                    "people": {"type": "integer", "description": "How many"},
                    "time": {"type": "string", "description": "HH:MM, local"},
                    "allergies": {"type": "array", "items": {"type": "string"}, "description": "Any to mention"},
                },
                "required": ["zone", "people"],
            },
            "description": "Book a table at the restaurant",
        },
    },
    {
        "function": {
            "description": "Convert an amount between currencies",
            "name": "convert",
            "parameters": {
                "required": ["to", "amount"],
                "type": "object",
                "properties": {"to": {"type": "string"}, "amount": {"type": "number"}, "from": {"type": "string"}},
            },
        },
        "type": "function",
    },
]

MESSAGES = [
    {"role": "system", "content": "You book tables and convert money."},
    {"role": "user", "content": "A table for 4 on the terrace at 20:00, and 30 EUR in USD?"},
]


def tokenizer(bos, eos):
    t = Tokenizer(models.WordLevel({"<unk>": 0, bos: 1, eos: 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token=bos, eos_token=eos, unk_token="<unk>")


def main():
    t = template_strings()
    cases = [
        ("dolphin-2.9-llama3-8b", t["DOLPHIN_LLAMA3"], None, "<|begin_of_text|>", "<|im_end|>"),
        ("openhermes-mixtral-8x7b-gptq", t["OPENHERMES_MIXTRAL"], None, "<s>", "<|im_end|>"),
        ("openhermes-2-pro-mistral-7b", t["HERMES_2_PRO_MISTRAL"], t["HERMES_2_PRO_TOOL_USE"], "<s>", "<|im_end|>"),
    ]
    prompt = json.dumps(MESSAGES, ensure_ascii=False)
    tools = json.dumps(TOOLS, ensure_ascii=False)
    out = []
    for name, default, tool_use, bos, eos in cases:
        tok = tokenizer(bos, eos)
        # As the model ships it: one template, or a named list that transformers picks from
        # (`tool_use` when the request passes tools).
        tok.chat_template = default if tool_use is None else {"default": default, "tool_use": tool_use}
        rendered = tok.apply_chat_template(json.loads(prompt), tools=json.loads(tools), tokenize=False, add_generation_prompt=True)
        out.append(
            {
                "model": name,
                "template": default,
                "tool_use": tool_use,
                "bos_token": bos,
                "eos_token": eos,
                "prompt": prompt,
                "tools": tools,
                "rendered": rendered,
            }
        )
    doc = {"transformers": transformers.__version__, "cases": out}
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(out)} cases")


if __name__ == "__main__":
    main()
