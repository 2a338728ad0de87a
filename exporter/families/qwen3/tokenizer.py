"""The synthetic Qwen3 tokenizer and chat template written beside `mxport synth --preset qwen3-tiny` (and the
Qwen3-MoE presets), so synth -> export -> `mxport chat` works offline.

    write_synth_files(cfg, folder)   # tokenizer.json (byte-level BPE with Qwen3's special tokens),
                                     # tokenizer_config.json + chat_template.jinja (QWEN3_TEMPLATE),
                                     # generation_config.json

The chat template is rendered at chat time by runtime/chat/template.py (as transformers' apply_chat_template does).
"""

from __future__ import annotations

import json
from pathlib import Path

from mxport.contract.folder import CHAT_TEMPLATE_FILE, GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from mxport.errors import MxportError
from mxport.exporter.synth_tokenizer import build_byte_level_bpe

# Qwen3's special tokens and their ids in its 151936-row vocabulary (Qwen/Qwen3-*/tokenizer_config.json)
QWEN3_SPECIALS: dict[str, int] = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
    "<tool_call>": 151657, "</tool_call>": 151658, "<think>": 151667, "</think>": 151668,
}
QWEN3_VOCAB_MIN = 151669  # rows needed for Qwen3's own ids; smaller vocabularies put the specials at the top

# A chat template of Qwen3's shape (written for mxport): ChatML turns, an optional system turn (with a tools block
# when tools are given), reasoning kept only for assistant turns after the last user message, tool calls as
# <tool_call> JSON, tool results as user turns in <tool_response>, and `enable_thinking=false` closing an empty
# think block in the generation prompt.
QWEN3_TEMPLATE = """\
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages and messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{% endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with \
function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n\
</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for m in messages %}
{%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
{%- elif m.role == 'assistant' %}
{%- set content = m.content or '' %}
{%- set reasoning = m.reasoning_content or '' %}
{%- if not reasoning and '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>assistant\\n' }}
{%- if loop.index0 > ns.last_user and reasoning %}
{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}
{%- endif %}
{{- content }}
{%- for call in m.tool_calls or [] %}
{%- set f = call.function if call.function else call %}
{{- '\\n<tool_call>\\n{"name": "' + f.name + '", "arguments": ' }}
{%- if f.arguments is string %}{{ f.arguments }}{% else %}{{ f.arguments | tojson }}{% endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + m.content + '\\n</tool_response><|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}
{%- endif %}
"""


def qwen3_special_ids(vocab_size: int) -> dict[str, int]:
    """Qwen3's ids when the vocabulary has room for them, else the top ids in QWEN3_SPECIALS' order."""
    if vocab_size >= QWEN3_VOCAB_MIN:
        return dict(QWEN3_SPECIALS)
    return {tok: vocab_size - len(QWEN3_SPECIALS) + i for i, tok in enumerate(QWEN3_SPECIALS)}


def write_synth_files(cfg, folder: str | Path) -> None:
    """tokenizer.json, tokenizer_config.json (chat_template, eos <|im_end|>, pad <|endoftext|>), chat_template.jinja
    and generation_config.json beside a synthetic Qwen3 checkpoint. The config's eos/pad ids must be the
    tokenizer's (the presets are built that way)."""
    folder = Path(folder)
    ids = qwen3_special_ids(cfg.vocab_size)
    if cfg.eos_token_ids and cfg.eos_token_ids[0] != ids["<|im_end|>"]:
        raise MxportError(f"eos_token_id {cfg.eos_token_ids[0]} is not the synthetic tokenizer's <|im_end|> "
                          f"({ids['<|im_end|>']}) for vocab_size {cfg.vocab_size}")
    build_byte_level_bpe(cfg.vocab_size, ids).save(str(folder / TOKENIZER_FILE))
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in sorted(ids.items(), key=lambda kv: kv[1])}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added, "bos_token": None,
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
              "model_max_length": cfg.max_position_embeddings, "clean_up_tokenization_spaces": False,
              "chat_template": QWEN3_TEMPLATE}
    (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CHAT_TEMPLATE_FILE).write_text(QWEN3_TEMPLATE)
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": list(cfg.eos_token_ids),
                  "pad_token_id": cfg.pad_token_id, "do_sample": False}
    (folder / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
