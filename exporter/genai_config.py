"""genai_config.json: what onnxruntime-genai needs to run an export folder as is (C, C#, Java, Python hosts).

onnxruntime-genai's parser rejects keys it does not know, so this writes only its own keys:

    model:  type "decoder" (its generic decoder-only loop), context_length, vocab_size, eos/pad ids,
            decoder: filename, head/hidden/layer/KV-head counts, I/O names (`%d` = layer),
                     sliding_window (window-sized caches only, see below)
    search: greedy defaults (top_k 1, do_sample false), max_length = the context, past_present_share_buffer
            true where every layer's past is read and its present written by one GroupQueryAttention alone (a
            --target cpu / cuda graph without window-sized caches: GQA's shared-buffer mode, the static cache
            mxport's own sessions use, contract/io.shared_buffer_layers), else false (presents are past + new)

Window-sized caches (ARCHITECTURE.md): a sliding layer's present is the last min(P+S, W-1) slots, so its cache
length differs from the full layers'. With share_buffer off, genai allocates every present before each run as
min(total_length, capacity), the capacity of a sliding layer being `window_size + slack` where slack is
`cache_slack` when > 0, else an execution-provider default (16 on CPU). To get capacity W-1 on every provider the
config says window_size W-2 and cache_slack 1; slide_inputs / slide_key_value_cache are off (mxport's graph does
the windowing, genai only sizes the buffers). The `layers` list names the sliding layers.

Every value is read from the config attributes the runtime already uses (num_hidden_layers, num_key_value_heads,
head_dim, hidden_size, num_attention_heads, vocab_size, eos_token_ids, pad_token_id, max_position_embeddings and
`window(layer)`), so any model family that provides them gets a genai folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx_ir as ir

from mxport.contract import io
from mxport.contract.folder import GENAI_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Manifest
from mxport.errors import MxportError

# ort-extensions (genai's tokenizer) needs tokenizer_config.json beside tokenizer.json; written when absent.
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False}


def sliding_layers(cfg: Any) -> list[tuple[int, int]]:
    """(layer, window) of every sliding-window layer (config.window(i) > 0); [] for a config without windows."""
    window = getattr(cfg, "window", None)
    if window is None:
        return []
    return [(i, int(window(i))) for i in range(cfg.num_hidden_layers) if int(window(i)) > 0]


def genai_config(cfg: Any, *, inputs: list[str], outputs: list[str], window_cache: bool,
                 model_file: str = MODEL_FILE, provider: str | None = None,
                 share_buffer: bool = False) -> dict[str, Any]:
    """The genai_config.json dict for an export of `cfg` whose graph has these input / output names.

    share_buffer: genai may bind one [B, kv_heads, max_length, head_dim] buffer as each layer's past and present
    (onnxruntime-genai's past_present_share_buffer, what its own builder writes for GroupQueryAttention graphs):
    no copy of the cache per step."""
    for name in (io.INPUT_IDS, io.ATTENTION_MASK, io.LOGITS, io.past_names(0)[0], io.present_names(0)[0]):
        if name not in inputs + outputs:
            raise MxportError(f"genai_config: the graph has no {name!r} (model I/O contract, mxport/contract/io.py)")
    eos = [int(e) for e in cfg.eos_token_ids]
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    (past_key, past_value), (present_key, present_value) = io.past_names("%d"), io.present_names("%d")
    names_in = {
        io.INPUT_IDS: io.INPUT_IDS,
        io.ATTENTION_MASK: io.ATTENTION_MASK,
        "past_key_names": past_key,
        "past_value_names": past_value,
    }
    if io.POSITION_IDS in inputs:
        names_in[io.POSITION_IDS] = io.POSITION_IDS
    decoder: dict[str, Any] = {
        "session_options": {"log_id": "onnxruntime-genai",
                            "provider_options": [{provider: {}}] if provider else []},
        "filename": model_file,
        "head_size": int(cfg.head_dim),
        "hidden_size": int(cfg.hidden_size),
        "inputs": names_in,
        "outputs": {io.LOGITS: io.LOGITS, "present_key_names": present_key, "present_value_names": present_value},
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "num_key_value_heads": int(cfg.num_key_value_heads),
    }
    sliding = sliding_layers(cfg) if window_cache else []
    if sliding:
        windows = sorted({w for _, w in sliding})
        if len(windows) > 1:
            raise MxportError(f"genai_config: sliding layers with different windows {windows}; genai takes one")
        (w,) = windows
        if w < 3:
            raise MxportError(f"genai_config: sliding_window {w} is too small for genai's cache sizing (needs >= 3)")
        decoder["sliding_window"] = {
            "window_size": w - 2,  # + cache_slack 1 = W-1 slots, what mxport's sliding presents hold
            "cache_slack": 1,
            "layers": [i for i, _ in sliding],
            "slide_inputs": False,
            "slide_key_value_cache": False,
        }
    context = int(cfg.max_position_embeddings)
    model: dict[str, Any] = {
        "context_length": context,
        "decoder": decoder,
        "eos_token_id": eos if len(eos) != 1 else eos[0],
        "pad_token_id": int(pad),
        "type": "decoder",
        "vocab_size": int(cfg.vocab_size),
    }
    bos = getattr(cfg, "bos_token_id", None)
    if bos is not None:
        model["bos_token_id"] = int(bos)
    search = {
        "diversity_penalty": 0.0,
        "do_sample": False,
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": context,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": bool(share_buffer),
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_k": 1,
        "top_p": 1.0,
    }
    return {"model": model, "search": search}


def write_genai_files(folder: Path, cfg: Any, meta: Manifest, model: ir.Model) -> None:
    """genai_config.json (+ a minimal tokenizer_config.json when the folder has tokenizer.json alone) for the
    export of `model` (the graph just saved into `folder`)."""
    provider = {"cuda": "cuda"}.get(meta.target)
    pasts = [n for n in meta.inputs if n.startswith(io.PAST)]
    nodes = ((n.domain, n.op_type, [v.name if v is not None else "" for v in n.inputs], [v.name for v in n.outputs])
             for n in model.graph)
    shared = io.shared_buffer_layers(nodes, pasts, [io.past_to_present(n) for n in pasts])
    config = genai_config(cfg, inputs=list(meta.inputs), outputs=list(meta.outputs),
                          window_cache=meta.window_cache, provider=provider,
                          share_buffer=bool(shared) and all(shared))
    (folder / GENAI_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if (folder / TOKENIZER_FILE).is_file() and not (folder / TOKENIZER_CONFIG_FILE).is_file():
        (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
