#!/usr/bin/env python3
"""Write the transformers reference data that heurist-inference's safetensors, chat-template and
sampling tests read.

The independent peer is Hugging Face transformers (4.44.2, torch 2.4.0 on the CPU), run from the
shared virtual environment tools/.venv-image (made by tools/make_image_fixtures.py). Nothing it
installs is committed; the files it writes under heurist-inference/tests/fixtures/transformers/
are.

    tools/.venv-image/bin/python tools/make_transformers_fixtures.py

It writes:
  - models/{llama3,mistral,mixtral}/: tiny random-weight models of the real architectures in the
    real Hugging Face layout (config.json, model*.safetensors (+ index when sharded),
    tokenizer.json, tokenizer_config.json with the chat template), seeded:
      llama3: LlamaForCausalLM, rope_theta 500000, GQA (4 heads, 2 KV heads), byte-level BPE,
              ChatML template (dolphin-2.9-llama3-8b), saved in three shards plus an index;
      llama31: the same with Llama 3.1's "llama3" RoPE scaling;
      mistral: MistralForCausalLM, sliding window 48, SentencePiece-style (Metaspace) BPE,
              ChatML template with BOS (Hermes-2-Pro-Mistral-7B);
      mixtral: MixtralForCausalLM, 4 experts, top-2 routing, no sliding window, same tokenizer,
              ChatML template (OpenHermes-Mixtral);
    plus llama3-bf16/ and llama3-f16/, the llama3 model cast to bfloat16 and float16;
  - models.json: per model and prompt, the rendered prompt, its token ids (apply_chat_template,
    tokenize=True), 16 greedy tokens (argmax of the logits, no end-of-sequence stop), the
    full logits after the prompt and after each greedy token (eager attention, float32), and
    output_hidden_states at every layer index (0 = embeddings ... num_hidden_layers = after the
    final norm) for the positions those logits come from; plus "mistral-window8": the mistral
    weights run with sliding_window 8 (config_overrides), so that prompts pass the window;
  - templates.json: five real chat templates rendered by apply_chat_template on ten
    conversations each, with and without the generation prompt (or the error the template
    raised); tool_templates.json: Hermes 2 Pro's tool_use template over conversations with
    OpenAI tools, assistant tool_calls and tool results;
  - sampling.json: fixed random logits and token histories run through transformers' logits
    processors in vLLM's order (see SAMPLING_ORDER), with the resulting distributions.
"""
import json
import os
import shutil

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "heurist-inference", "tests", "fixtures", "transformers")
GREEDY_TOKENS = 16

# --- Chat templates, written from each model's tokenizer_config.json as published on the model
# hub (no hub access here; the strings were checked against public copies of those configs).

# cognitivecomputations/dolphin-2.9-llama3-8b (network model dolphin-2.9-llama3-8b): ChatML.
DOLPHIN_LLAMA3 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# NousResearch/Hermes-2-Pro-Mistral-7B (network model openhermes-2-pro-mistral-7b), its
# "default" template: ChatML after the BOS token.
HERMES_2_PRO_MISTRAL = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' +"
    " message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# orangetin/OpenHermes-Mixtral-8x7B, quantized as TheBloke/orangetin-OpenHermes-Mixtral-8x7B-GPTQ
# (network model openhermes-mixtral-8x7b-gptq): OpenHermes 2.5's ChatML, no BOS.
OPENHERMES_MIXTRAL = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# meta-llama/Meta-Llama-3-8B-Instruct: the official Llama 3 template.
LLAMA3_OFFICIAL = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# mistralai/Mistral-7B-Instruct-v0.1 (and Mixtral-8x7B-Instruct-v0.1): [INST], user/assistant
# alternating, no system role.
MISTRAL_INST = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}"
)

# NousResearch/Hermes-2-Pro-Mistral-7B (network model openhermes-2-pro-mistral-7b), the
# "tool_use" entry of its chat_template list, which transformers (and vLLM through it) picks
# whenever a request passes `tools`; the same text ships as Hermes-3-Llama-3.1-8B's tool_use
# template. Copied from public copies of those tokenizer_config.json files (no hub access here).
HERMES_2_PRO_TOOL_USE = (
    "{%- macro json_to_python_type(json_spec) %}\n{%- set basic_type_map = {\n    \"string\": \"str\",\n"
    "    \"number\": \"float\",\n    \"integer\": \"int\",\n    \"boolean\": \"bool\"\n} %}\n\n"
    "{%- if basic_type_map[json_spec.type] is defined %}\n    {{- basic_type_map[json_spec.type] }}\n"
    "{%- elif json_spec.type == \"array\" %}\n    {{- \"list[\" +  json_to_python_type(json_spec|items) + \"]\"}}\n"
    "{%- elif json_spec.type == \"object\" %}\n    {%- if json_spec.additionalProperties is defined %}\n"
    "        {{- \"dict[str, \" + json_to_python_type(json_spec.additionalProperties) + ']'}}\n"
    "    {%- else %}\n        {{- \"dict\" }}\n    {%- endif %}\n"
    "{%- elif json_spec.type is iterable %}\n    {{- \"Union[\" }}\n    {%- for t in json_spec.type %}\n"
    "      {{- json_to_python_type({\"type\": t}) }}\n      {%- if not loop.last %}\n        {{- \",\" }} \n"
    "    {%- endif %}\n    {%- endfor %}\n    {{- \"]\" }}\n{%- else %}\n    {{- \"Any\" }}\n{%- endif %}\n"
    "{%- endmacro %}\n\n\n{{- bos_token }}\n{{- '<|im_start|>system\\n' }}\n"
    "{{- \"You are a function calling AI model. You are provided with function signatures within "
    "<tools></tools> XML tags. You may call one or more functions to assist with the user query. "
    "Don't make assumptions about what values to plug into functions. Here are the available tools: "
    "<tools> \" }}\n{%- for tool in tools %}\n    {%- if tool.function is defined %}\n"
    "        {%- set tool = tool.function %}\n    {%- endif %}\n"
    "    {{- '{\"type\": \"function\", \"function\": ' }}\n    {{- '{\"name\": \"' + tool.name + '\", ' }}\n"
    "    {{- '\"description\": \"' + tool.name + '(' }}\n"
    "    {%- for param_name, param_fields in tool.parameters.properties|items %}\n"
    "        {{- param_name + \": \" + json_to_python_type(param_fields) }}\n        {%- if not loop.last %}\n"
    "            {{- \", \" }}\n        {%- endif %}\n    {%- endfor %}\n    {{- \")\" }}\n"
    "    {%- if tool.return is defined %}\n        {{- \" -> \" + json_to_python_type(tool.return) }}\n"
    "    {%- endif %}\n    {{- \" - \" + tool.description + \"\\n\\n\" }}\n"
    "    {%- for param_name, param_fields in tool.parameters.properties|items %}\n        {%- if loop.first %}\n"
    "            {{- \"    Args:\\n\" }}\n        {%- endif %}\n"
    "        {{- \"        \" + param_name + \"(\" + json_to_python_type(param_fields) + \"): \" + "
    "param_fields.description|trim }}\n    {%- endfor %}\n"
    "    {%- if tool.return is defined and tool.return.description is defined %}\n"
    "        {{- \"\\n    Returns:\\n        \" + tool.return.description }}\n    {%- endif %}\n"
    "    {{- '\"' }}\n    {{- ', \"parameters\": ' }}\n    {%- if tool.parameters.properties | length == 0 %}\n"
    "        {{- \"{}\" }}\n    {%- else %}\n        {{- tool.parameters|tojson }}\n    {%- endif %}\n"
    "    {{- \"}\" }}\n    {%- if not loop.last %}\n        {{- \"\\n\" }}\n    {%- endif %}\n{%- endfor %}\n"
    "{{- \" </tools>\" }}\n"
    "{{- 'Use the following pydantic model json schema for each tool call you will make: "
    "{\"properties\": {\"name\": {\"title\": \"Name\", \"type\": \"string\"}, \"arguments\": "
    "{\"title\": \"Arguments\", \"type\": \"object\"}}, \"required\": [\"name\", \"arguments\"], "
    "\"title\": \"FunctionCall\", \"type\": \"object\"}}\\n' }}\n"
    "{{- \"For each function call return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags as follows:\\n\" }}\n{{- \"<tool_call>\\n\" }}\n"
    "{{- '{\"name\": <function-name>, \"arguments\": <args-dict>}\\n' }}\n{{- '</tool_call><|im_end|>\\n' }}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == \"user\" or message.role == \"system\" or (message.role == \"assistant\" "
    "and message.tool_calls is not defined) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "    {%- for tool_call in message.tool_calls %}\n       {{- '\\n<tool_call>\\n' }}"
    "           {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n            {{- '{' }}\n            {{- '\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n            {{- '\"' }}\n            {{- ', '}}\n"
    "            {%- if tool_call.arguments is defined %}\n                {{- '\"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n                    {{- tool_call.arguments|tojson }}\n"
    "                {%- endif %}\n            {%- endif %}\n             {{- '}' }}\n"
    "            {{- '\\n</tool_call>' }}\n    {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n        {%- if loop.previtem and loop.previtem.role != \"tool\" %}\n"
    "            {{- '<|im_start|>tool\\n' }}\n        {%- endif %}\n        {{- '<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {%- if not loop.last %}\n            {{- '\\n</tool_response>\\n' }}\n"
    "        {%- else %}\n            {{- '\\n</tool_response>' }}\n        {%- endif %}\n"
    "        {%- if not loop.last and loop.nextitem.role != \"tool\" %}\n            {{- '<|im_end|>' }}\n"
    "        {%- elif loop.last %}\n            {{- '<|im_end|>' }}\n        {%- endif %}\n    {%- endif %}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

TEMPLATES = [
    ("dolphin-2.9-llama3-8b", DOLPHIN_LLAMA3, "<|begin_of_text|>", "<|im_end|>"),
    ("openhermes-2-pro-mistral-7b", HERMES_2_PRO_MISTRAL, "<s>", "<|im_end|>"),
    ("openhermes-mixtral-8x7b-gptq", OPENHERMES_MIXTRAL, "<s>", "<|im_end|>"),
    ("llama-3-instruct", LLAMA3_OFFICIAL, "<|begin_of_text|>", "<|eot_id|>"),
    ("mistral-instruct", MISTRAL_INST, "<s>", "</s>"),
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [
        {"role": "user", "content": "Write a haiku about rain."},
        {"role": "assistant", "content": "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky"},
        {"role": "user", "content": "Now one about snow."},
    ],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Je vais bien, merci."},
        {"role": "user", "content": "And the weather?"},
    ],
    [{"role": "user", "content": "  padded with spaces and a newline\n"}],
    [{"role": "user", "content": "Unicode: café, 東京, emoji 🚀, math ∑x²"}],
    [
        {"role": "user", "content": "List three primes."},
        {"role": "assistant", "content": "2, 3, 5"},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Empty system prompt."},
    ],
    [{"role": "user", "content": "Quotes \"double\" and 'single', braces {{ }} and {% raw %}"}],
    [
        {"role": "user", "content": "Line one\n\nLine three\ttabbed"},
        {"role": "assistant", "content": "  Reply with leading spaces  "},
        {"role": "user", "content": "ok"},
    ],
]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world! How are you today?",
    "What is the capital of France? Paris is the capital of France.",
    "Write a haiku about rain. Soft rain on the roof whispers to the sleeping town.",
    "system user assistant tool The weather is nice. Numbers 0 1 2 3 4 5 6 7 8 9 10 42 2024.",
    "Answer briefly and helpfully. I am a helpful assistant and I like to help people.",
] * 20

PROMPTS = [
    [{"role": "user", "content": "Hello, how are you?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
]


def byte_level_tokenizer():
    """A Llama 3 style byte-level BPE (GPT-2 alphabet, no prefix space)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|end_of_text|>"],
        clean_up_tokenization_spaces=False,
    )
    return fast


def metaspace_tokenizer():
    """A Llama 2 / Mistral style SentencePiece BPE: ▁ for spaces, <0xNN> byte fallback, and
    Mistral's decoder chain (▁ → space, byte fallback, fuse, strip one leading space)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=480, special_tokens=specials + byte_tokens, show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    # The trainer made the byte tokens "added" special tokens; in a real Mistral tokenizer they
    # are ordinary vocabulary entries that byte fallback produces, so move them back.
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in specials]
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    tok = Tokenizer.from_str(json.dumps(spec))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "</s>"],
        clean_up_tokenization_spaces=False,
    )
    return fast


def common(tok):
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        initializer_range=0.25,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def build_models():
    torch.manual_seed(20261125)
    llama_tok = byte_level_tokenizer()
    sp_tok = metaspace_tokenizer()
    specs = [
        (
            "llama3",
            LlamaForCausalLM(
                LlamaConfig(**common(llama_tok), rope_theta=500000.0, max_position_embeddings=128)
            ),
            llama_tok,
            DOLPHIN_LLAMA3,
            "60KB",
        ),
        (
            "mistral",
            MistralForCausalLM(
                MistralConfig(
                    **common(sp_tok), rope_theta=10000.0, max_position_embeddings=256, sliding_window=48
                )
            ),
            sp_tok,
            HERMES_2_PRO_MISTRAL,
            None,
        ),
        (
            "mixtral",
            MixtralForCausalLM(
                MixtralConfig(
                    **common(sp_tok),
                    rope_theta=1000000.0,
                    max_position_embeddings=128,
                    sliding_window=None,
                    num_local_experts=4,
                    num_experts_per_tok=2,
                )
            ),
            sp_tok,
            OPENHERMES_MIXTRAL,
            None,
        ),
        (
            # Llama 3.1's RoPE scaling (dolphin-2.9.4-llama3.1-8b, Hermes-3-Llama-3.1-8B), with
            # an original context small enough that the tiny head's frequencies span all three
            # bands (kept, interpolated, divided by the factor).
            "llama31",
            LlamaForCausalLM(
                LlamaConfig(
                    **common(llama_tok),
                    rope_theta=500000.0,
                    max_position_embeddings=128,
                    rope_scaling={
                        "rope_type": "llama3",
                        "factor": 8.0,
                        "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 256,
                    },
                )
            ),
            llama_tok,
            DOLPHIN_LLAMA3,
            None,
        ),
    ]
    return specs


@torch.no_grad()
def hidden_states(model, ids, greedy):
    """output_hidden_states of one pass over the prompt and the greedy tokens but the last:
    per greedy step (the position whose logits chose it), every layer index's state."""
    seq = list(ids) + greedy[:-1]
    out = model(torch.tensor([seq]), output_hidden_states=True)
    first = len(ids) - 1
    return [
        [[round(float(v), 6) for v in layer[0, first + step]] for layer in out.hidden_states]
        for step in range(len(greedy))
    ]


@torch.no_grad()
def run(model, ids):
    """Logits after the prompt and after each of GREEDY_TOKENS argmax tokens (no cache)."""
    seq = list(ids)
    steps = []
    greedy = []
    for _ in range(GREEDY_TOKENS + 1):
        logits = model(torch.tensor([seq])).logits[0, -1].float()
        steps.append(logits)
        if len(greedy) == GREEDY_TOKENS:
            break
        token = int(torch.argmax(logits))
        greedy.append(token)
        seq.append(token)
    top2 = [torch.topk(s, 2).values for s in steps[:GREEDY_TOKENS]]
    margin = min(float(t[0] - t[1]) for t in top2)
    return greedy, steps, margin


def save_model(name, model, tok, template, shard):
    path = os.path.join(OUT, "models", name)
    shutil.rmtree(path, ignore_errors=True)
    tok.chat_template = template
    model.generation_config = transformers.GenerationConfig()
    kwargs = {"safe_serialization": True}
    if shard:
        kwargs["max_shard_size"] = shard
    model.save_pretrained(path, **kwargs)
    tok.save_pretrained(path)
    # generation_config.json and special_tokens_map.json are not what the engine reads.
    for extra in ("generation_config.json", "special_tokens_map.json"):
        p = os.path.join(path, extra)
        if os.path.exists(p):
            os.remove(p)
    return path


def cases_for(model, tok):
    cases = []
    for messages in PROMPTS:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        greedy, steps, margin = run(model, ids)
        cases.append(
            {
                "messages": messages,
                "rendered_prompt": rendered,
                "prompt_token_ids": ids,
                "greedy_token_ids": greedy,
                "greedy_min_top2_margin": margin,
                "logits": [[round(float(v), 7) for v in s] for s in steps],
                "hidden_states": hidden_states(model, ids, greedy),
            }
        )
    return cases


# Mistral's window, small enough that every prompt passes it (transformers reads
# config.sliding_window at each forward, so the saved weights run unchanged).
SMALL_WINDOW = 8


def model_fixtures():
    out = {}
    for name, model, tok, template, shard in build_models():
        model.eval()
        save_model(name, model, tok, template, shard)
        cases = cases_for(model, tok)
        if name == "mistral":
            window = model.config.sliding_window
            model.config.sliding_window = SMALL_WINDOW
            windowed = cases_for(model, tok)
            assert all(len(c["prompt_token_ids"]) > SMALL_WINDOW for c in windowed)
            assert windowed[0]["logits"][-1] != cases[0]["logits"][-1], "the window changed nothing"
            out["mistral-window8"] = {
                "dtype": "float32",
                "config_overrides": {"sliding_window": SMALL_WINDOW},
                "cases": windowed,
            }
            model.config.sliding_window = window
        encodings = []
        for text in ["Hello world!", "The capital of France is Paris.", " spaced  out\nnew line", "café ∑ 🚀"]:
            ids = tok.encode(text, add_special_tokens=False)
            encodings.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
        entry = {"dtype": "float32", "cases": cases, "encodings": encodings}
        if name == "llama3":
            # The same weights in half precisions, run by transformers in that precision.
            ids = cases[0]["prompt_token_ids"]
            for suffix, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
                half = model.to(dtype)
                save_model(f"llama3-{suffix}", half, tok, template, None)
                with torch.no_grad():
                    logits = half(torch.tensor([ids])).logits[0, -1].float()
                out[f"llama3-{suffix}"] = {
                    "dtype": str(dtype).removeprefix("torch."),
                    "prompt_token_ids": ids,
                    "logits": [round(float(v), 5) for v in logits],
                }
                model = model.float()
        out[name] = entry
    return out


def template_fixtures():
    out = []
    for name, source, bos, eos in TEMPLATES:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.BPE()), bos_token=bos, eos_token=eos
        )
        renders = []
        for conv in CONVERSATIONS:
            for gen in (True, False):
                try:
                    text = tok.apply_chat_template(
                        conv, chat_template=source, tokenize=False, add_generation_prompt=gen
                    )
                    renders.append({"messages": conv, "add_generation_prompt": gen, "rendered": text})
                except Exception as err:  # the template's raise_exception
                    renders.append(
                        {"messages": conv, "add_generation_prompt": gen, "error": str(err)}
                    )
        out.append({"name": name, "template": source, "bos_token": bos, "eos_token": eos, "renders": renders})
    return out


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and country, e.g. Paris, France"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "The unit to use"},
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_flights",
            "description": "Search flights between two airports",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string", "description": "IATA code of the origin"},
                    "stops": {"type": "integer", "description": "  Most stops allowed  "},
                    "days": {"type": "array", "items": {"type": "string"}, "description": "Dates, ISO 8601"},
                    "flexible": {"type": "boolean", "description": "Whether nearby dates will do"},
                    "budget": {"type": ["number", "integer"], "description": "Most to pay, in €"},
                    "filters": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "Limits"},
                },
                "required": ["origin"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The current time in UTC", "parameters": {"type": "object", "properties": {}}},
    },
]

WEATHER_CALL = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "get_current_weather", "arguments": '{"location": "Paris, France", "unit": "celsius"}'},
}

TOOL_CONVERSATIONS = [
    [{"role": "user", "content": "What is the weather in Paris?"}],
    [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "tool_call_id": "call_0", "name": "get_current_weather", "content": '{"temperature": 18, "unit": "celsius"}'},
        {"role": "assistant", "content": "It is 18 °C in Paris."},
        {"role": "user", "content": "And flights from CDG to Zürich?"},
    ],
    [
        {"role": "user", "content": "Weather in Paris, and the time?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                WEATHER_CALL,
                {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "name": "get_current_weather", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_time", "content": "12:00"},
    ],
    [
        {"role": "user", "content": "Find flights from CDG."},
        {
            "role": "assistant",
            "content": None,
            # Arguments as an object rather than OpenAI's JSON string: some clients send them so.
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "search_flights", "arguments": {"origin": "CDG", "days": ["2024-08-01"], "stops": 1}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "name": "search_flights", "content": "[]"},
        {"role": "user", "content": "Nothing? Try again tomorrow."},
    ],
]


def tool_template_fixtures():
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<s>", eos_token="<|im_end|>")
    renders = []
    for conv in TOOL_CONVERSATIONS:
        for gen in (True, False):
            text = tok.apply_chat_template(
                conv, tools=TOOLS, chat_template=HERMES_2_PRO_TOOL_USE, tokenize=False, add_generation_prompt=gen
            )
            # As JSON text: the keys' order reaches the template, and a reader that sorts
            # keys would change what transformers saw.
            renders.append({"messages_json": json.dumps(conv, ensure_ascii=False), "add_generation_prompt": gen, "rendered": text})
    # The same conversations through the default (ChatML) template with the tool_use one beside
    # it, as transformers picks between them: tool_use with tools, default without.
    named = [{"name": "default", "template": HERMES_2_PRO_MISTRAL}, {"name": "tool_use", "template": HERMES_2_PRO_TOOL_USE}]
    tok.chat_template = {t["name"]: t["template"] for t in named}
    picked = []
    for conv in (TOOL_CONVERSATIONS[0], CONVERSATIONS[1]):
        for tools in (None, TOOLS):
            text = tok.apply_chat_template(conv, tools=tools, tokenize=False, add_generation_prompt=True)
            picked.append({"messages_json": json.dumps(conv, ensure_ascii=False), "with_tools": tools is not None, "rendered": text})
    return {
        "name": "hermes-2-pro-tool-use",
        "template": HERMES_2_PRO_TOOL_USE,
        "named_templates": named,
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "tools_json": json.dumps(TOOLS, ensure_ascii=False),
        "renders": renders,
        "picked": picked,
    }


# vLLM's order (vllm/model_executor/layers/sampler.py, Sampler.forward, v0.5-v0.6): penalties
# (repetition over prompt + output, then frequency and presence over the output), then
# temperature, then top-k and top-p together, then min-p.
SAMPLING_ORDER = ["repetition", "frequency_presence", "temperature", "top_k", "top_p", "min_p"]


def apply_sampling(logits, prompt, output, p):
    scores = logits.clone()[None, :]
    history = torch.tensor([prompt + output], dtype=torch.long)
    if p["repetition_penalty"] != 1.0 and history.numel() > 0:
        scores = RepetitionPenaltyLogitsProcessor(p["repetition_penalty"])(history, scores)
    # OpenAI / vLLM: logits[t] -= frequency * count_out(t) + presence * (count_out(t) > 0).
    counts = torch.zeros_like(scores)
    for t in output:
        counts[0, t] += 1
    scores = scores - p["frequency_penalty"] * counts - p["presence_penalty"] * (counts > 0).float()
    if p["temperature"] not in (0.0, 1.0):
        scores = TemperatureLogitsWarper(p["temperature"])(history, scores)
    if p["top_k"] > 0:
        scores = TopKLogitsWarper(p["top_k"])(history, scores)
    if p["top_p"] < 1.0:
        scores = TopPLogitsWarper(p["top_p"])(history, scores)
    if p["min_p"] > 0.0:
        scores = MinPLogitsWarper(p["min_p"])(history, scores)
    probs = torch.softmax(scores[0].double(), dim=-1)
    return scores[0], probs


def sampling_fixtures():
    gen = torch.Generator().manual_seed(7)
    base = dict(
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
    )
    variants = [
        {},
        {"temperature": 0.7},
        {"temperature": 1.5},
        {"top_k": 5},
        {"top_k": 1},
        {"top_p": 0.9},
        {"top_p": 0.5, "temperature": 0.8},
        {"top_p": 0.0},
        {"min_p": 0.1},
        {"min_p": 0.05, "temperature": 1.3},
        {"repetition_penalty": 1.3},
        {"repetition_penalty": 0.8},
        {"presence_penalty": 0.6},
        {"frequency_penalty": 0.5},
        {"frequency_penalty": -0.4, "presence_penalty": 1.2},
        {"top_k": 8, "top_p": 0.8, "min_p": 0.05, "temperature": 0.9, "repetition_penalty": 1.1,
         "presence_penalty": 0.3, "frequency_penalty": 0.2},
        {"top_k": 40, "top_p": 0.95, "temperature": 0.6, "repetition_penalty": 1.2},
    ]
    cases = []
    vocab = 48
    for i, v in enumerate(variants):
        p = dict(base, **v)
        logits = (torch.randn(vocab, generator=gen) * 1.2).float()
        prompt = torch.randint(0, vocab, (6,), generator=gen).tolist()
        output = torch.randint(0, vocab, (5,), generator=gen).tolist()
        # A repeated output token, so frequency differs from presence.
        output.append(output[0])
        scores, probs = apply_sampling(logits, prompt, output, p)
        kept = [j for j in range(vocab) if torch.isfinite(scores[j])]
        cases.append(
            {
                "name": f"case{i}:" + ",".join(f"{k}={val}" for k, val in v.items()),
                "params": p,
                "logits": [float(x) for x in logits],
                "prompt_token_ids": prompt,
                "output_token_ids": output,
                "kept": kept,
                "probs": [float(x) for x in probs],
            }
        )
    return {"order": SAMPLING_ORDER, "cases": cases}


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "models.json"), "w") as f:
        json.dump(model_fixtures(), f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(OUT, "templates.json"), "w") as f:
        json.dump(template_fixtures(), f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "tool_templates.json"), "w") as f:
        json.dump(tool_template_fixtures(), f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "sampling.json"), "w") as f:
        json.dump(sampling_fixtures(), f, ensure_ascii=False, indent=1)
    print("transformers", transformers.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
