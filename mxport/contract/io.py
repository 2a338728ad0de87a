"""The model I/O contract: the names every export's graph, the NumPy oracle and every runner agree on, and the feeds.

    inputs   input_ids [B,S] int64, attention_mask [B,P+S] int64 (1 keep, 0 left pad), position_ids [B,S] int64,
             past_key_values.{i}.key / .value [B, kv_heads, P, head_dim] per layer i
    outputs  logits [B,S,V], present.{i}.key / .value [B, kv_heads, P+S, head_dim] (a sliding layer of a
             window-cache export: the last min(P+S, W-1) slots), hidden_states.{i} [B,S,H] when asked for
    residual the value `layers.{i}/residual` of every family's graph: the residual stream after layer i
             (the Add that ends the layer; lowering keeps the name when it fuses the Add), which verify exposes
             as hidden_states.{i}
    inputs of a layer's products  the values `layers.{i}/input_norm` (q/k/v), `layers.{i}/attn/attention:0` (o_proj),
             `layers.{i}/post_attn_norm` (MLP, router, experts), `layers.{i}/mlp/gated` or `/mlp/act` (down_proj)
             and `final/norm` (the head) of every family's graph, which verify exposes as tap/{value} when the
             export quantizes activations (each product is then judged on the export's own input to it)

    past_names(i), present_names(i)     -> (key, value) names of layer i (i may be "%d": genai's patterns)
    present_to_past(name), past_to_present(name), cache_layer(name)   -> renames, (i, "key" | "value") or None
    hidden_name(i), hidden_layer(name), layer_scope(i), residual_name(i)
    tap_value(i, role), tap_name(value), tapped(name), tap_layer(name)  -> product inputs (None: the head's)
    position_ids(mask, new_tokens)      -> positions of the last new_tokens slots: cumsum(mask) - 1, clipped at 0
    empty_cache(B, kv_heads, head_dim)  -> one [B, kv_heads, 0, head_dim] float32 array (a first step's past)
    make_feeds(ids, mask, past, cfg=)   -> the feeds of a first (or any) call
    step_feeds(outputs, next_ids, mask) -> the next cached call's feeds: presents become the past
    shared_buffer_layers(nodes, pasts, presents) -> per past: may one buffer be that past and its present?
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mxport.errors import MxportError

INPUT_IDS, ATTENTION_MASK, POSITION_IDS = "input_ids", "attention_mask", "position_ids"
LOGITS = "logits"
PAST, PRESENT, HIDDEN = "past_key_values.", "present.", "hidden_states."  # name prefixes
KV = ("key", "value")
RESIDUAL = "residual"  # the role (Builder: value `layers.{i}/residual`) of the Add that ends layer i
# The names exports made before the one residual role still carry (read by verify, never written).
OLDER_RESIDUALS = ("moe_residual", "mlp_residual")

# Values inside a layer that feed its matrix products (Builder roles, `layers.{i}/ROLE`), and the head's input.
INPUT_NORM, ATTENTION_OUT, POST_ATTN_NORM = "input_norm", "attn/attention:0", "post_attn_norm"
MLP_GATED, MLP_ACT = "mlp/gated", "mlp/act"  # the down projection's input: SwiGLU (Qwen3) / activation (GPT-2)
LAYER_TAPS = (INPUT_NORM, ATTENTION_OUT, POST_ATTN_NORM, MLP_GATED, MLP_ACT)
FINAL_NORM = "final/norm"
TAP = "tap/"  # output name prefix of such a value exposed by verify: tap/layers.0/input_norm

_CACHE = re.compile(rf"^(?:{re.escape(PAST)}|{re.escape(PRESENT)})(\d+)\.(key|value)$")
_HIDDEN = re.compile(rf"(?:^|[./]){re.escape(HIDDEN)}(\d+)$")


def past_names(i: int | str) -> tuple[str, str]:
    return f"{PAST}{i}.key", f"{PAST}{i}.value"


def present_names(i: int | str) -> tuple[str, str]:
    return f"{PRESENT}{i}.key", f"{PRESENT}{i}.value"


def present_to_past(name: str) -> str:
    """`present.{i}.key` -> `past_key_values.{i}.key` (the next call's input of the same layer)."""
    return PAST + name.removeprefix(PRESENT)


def past_to_present(name: str) -> str:
    """`past_key_values.{i}.key` -> `present.{i}.key` (the output of the same layer's cache)."""
    return PRESENT + name.removeprefix(PAST)


def cache_layer(name: str) -> tuple[int, str] | None:
    """(i, "key" | "value") of a past_key_values.{i}.* or present.{i}.* name, else None."""
    m = _CACHE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def hidden_name(i: int) -> str:
    return f"{HIDDEN}{i}"


def hidden_layer(name: str) -> int | None:
    """Layer index of a `hidden_states.{i}` name (also with a prefix such as `step2/`), else None."""
    m = _HIDDEN.search(name)
    return int(m.group(1)) if m else None


def layer_scope(i: int) -> str:
    """The scope of layer i's nodes and values (`layers.{i}`, then `/role`)."""
    return f"layers.{i}"


def residual_name(i: int, role: str = RESIDUAL) -> str:
    return f"{layer_scope(i)}/{role}"


def tap_value(i: int | None, role: str) -> str:
    """The value `layers.{i}/{role}`; i None: the head's input (FINAL_NORM)."""
    return FINAL_NORM if i is None else f"{layer_scope(i)}/{role}"


def tap_name(value: str) -> str:
    return TAP + value


def tapped(name: str) -> str | None:
    """The value a `tap/{value}` output exposes, else None."""
    return name[len(TAP):] if name.startswith(TAP) else None


def tap_layer(name: str) -> int | None:
    """Layer i of a `tap/layers.{i}/...` output, else None."""
    m = re.match(rf"^{re.escape(TAP)}layers\.(\d+)/", name)
    return int(m.group(1)) if m else None


# ---- feeds -----------------------------------------------------------------------------------------------------
def position_ids(mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last `new_tokens` slots of `mask` [B, P+S]: cumsum(mask) - 1 clipped at 0."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, mask.shape[1] - new_tokens :].astype(np.int64)


def empty_cache(batch: int, kv_heads: int, head_dim: int) -> np.ndarray:
    """A past of no slots, [batch, kv_heads, 0, head_dim] float32: what a first call takes for every layer."""
    return np.zeros((batch, kv_heads, 0, head_dim), np.float32)


def past_length(past: Mapping[str, np.ndarray]) -> int:
    """Past slots the attention_mask must cover: the longest layer cache (sliding layers with a window-sized
    cache hold fewer; the model checks each layer against the mask)."""
    return max((v.shape[2] for k, v in past.items() if k.startswith(PAST)), default=0)


def make_feeds(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    past: Mapping[str, np.ndarray] | Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    cfg: Any,
) -> dict[str, np.ndarray]:
    """Feeds for one call: input_ids [B,S], attention_mask [B,P+S] (default all ones), position_ids, and the past
    per layer: given as {past_key_values.{i}.key: ...}, as [(key, value)] per layer, or None = empty
    [B, kv_heads, 0, head_dim] float32 tensors (first step)."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise MxportError(f"{INPUT_IDS}: expected integers of shape [B,S], found {ids.dtype} {ids.shape}")
    B, S = ids.shape
    n = cfg.num_hidden_layers
    if past is None:
        empty = empty_cache(B, cfg.num_key_value_heads, cfg.head_dim)
        past_feeds = {name: empty for i in range(n) for name in past_names(i)}
    elif isinstance(past, Mapping):
        past_feeds = {name: past[name] for i in range(n) for name in past_names(i)}
    else:
        if len(past) != n:
            raise MxportError(f"past: expected {n} (key, value) pairs, found {len(past)}")
        past_feeds = {name: value for i, kv in enumerate(past) for name, value in zip(past_names(i), kv)}
    P = past_length(past_feeds)
    mask = np.ones((B, P + S), np.int64) if attention_mask is None else np.asarray(attention_mask, np.int64)
    if mask.ndim != 2 or mask.shape[0] != B or mask.shape[1] < P + S:
        raise MxportError(f"{ATTENTION_MASK}: expected shape [B, P+S] = {(B, P + S)}, found {mask.shape}")
    return {INPUT_IDS: ids.astype(np.int64), ATTENTION_MASK: mask, POSITION_IDS: position_ids(mask, S), **past_feeds}


def step_feeds(
    prev_outputs: Mapping[str, np.ndarray], next_ids: np.ndarray, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """Feeds for the next cached decode call: `present.{i}.*` of the previous call become `past_key_values.{i}.*`,
    `mask` (the previous call's attention_mask [B, P+S]) gets a 1 per new token, positions continue."""
    ids = np.asarray(next_ids, np.int64)
    if ids.ndim == 1:
        ids = ids[:, None]
    past = {present_to_past(k): v for k, v in prev_outputs.items() if k.startswith(PRESENT)}
    if not past:
        raise MxportError(f"step_feeds: the previous outputs have no {PRESENT}{{i}}.key/value to use as the cache")
    B, S = ids.shape
    mask = np.concatenate([np.asarray(mask, np.int64), np.ones((B, S), np.int64)], axis=1)
    P = past_length(past)
    if mask.shape[1] < P + S:
        raise MxportError(f"step_feeds: mask covers {mask.shape[1] - S} past slots but the cache holds {P}")
    return {INPUT_IDS: ids, ATTENTION_MASK: mask, POSITION_IDS: position_ids(mask, S), **past}


# ---- one buffer for a past and its present ----------------------------------------------------------------------
# The attention ops whose past_key / past_value (inputs 3, 4) may share one buffer with present_key / present_value
# (outputs 1, 2): ORT's GroupQueryAttention and mxport's op of the same contract (ops/group_query_attention.py).
SHARED_BUFFER_ATTENTION = frozenset({("com.microsoft", "GroupQueryAttention"), ("ai.mxport", "GroupQueryAttention")})


def shared_buffer_layers(nodes: Iterable[tuple[str, str, Sequence[str], Sequence[str]]],
                         pasts: Sequence[str], presents: Sequence[str]) -> list[bool]:
    """Per past input: True when one GroupQueryAttention (SHARED_BUFFER_ATTENTION) alone reads it (as past_key or
    past_value) and writes the matching present (output 1 or 2), so one buffer can be both (GQA's shared-buffer mode).
    `nodes`: (domain, op_type, input names, output names) of every graph node, "" for an absent optional input."""
    nodes = list(nodes)
    readers: dict[str, list[tuple[int, int]]] = {}
    for n, (_, _, inputs, _) in enumerate(nodes):
        for index, name in enumerate(inputs):
            readers.setdefault(name, []).append((n, index))
    out = []
    for past, present in zip(pasts, presents):
        users = readers.get(past, [])
        ok = len(users) == 1 and users[0][1] in (3, 4)
        if ok:
            domain, op_type, _, outputs = nodes[users[0][0]]
            index = users[0][1]
            ok = ((domain, op_type) in SHARED_BUFFER_ATTENTION
                  and len(outputs) > index - 2 and outputs[index - 2] == present
                  and present not in readers)  # nothing else in the graph reads the present
        out.append(ok)
    return out
