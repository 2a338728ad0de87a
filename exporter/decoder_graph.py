"""The portable graph of any decoder family: model I/O, KV caches, window-sized caches, hidden states and the
output projection here; the family's own wiring (embedding, positions, one layer, final norm) from its graph module.

    input_ids [B,S] ─ family.embed ─► x [B,S,H]          position_ids ─ family.positions ─► (cos, sin) or None
    per layer i: x, present_k, present_v = family.layer(b, cfg, w, i, x, positions, past_i, mask_i)
                 (sliding layers with window-sized caches get the mask tail and a trimmed present: layers.window_masks)
    logits [B,S,V] = family.final_norm(x) @ output projection (lm_head, or the tied embedding)

Inputs/outputs are the model I/O contract (mxport/contract/io.py); node names are `scope/role`, so identical checkpoints give
identical bytes.
"""

from __future__ import annotations

from mxport.contract import io
from mxport.exporter.graph import Builder, set_output, tensor_value
from mxport.exporter.layers import (BATCH, DOMAIN, DOMAIN_VERSION, FLOAT, INT64, PAST, PAST_W, PRESENT_W, SEQ, TOTAL,
                                    Weights, trim_present, window_masks)


def graph_module(cfg):
    """The family's graph wiring module (embed, positions, layer, final_norm, output)."""
    return cfg.family.graph


def build(ckpt, *, storage: str = "bfloat16", hidden_states: bool = False,
          window_cache: bool = True) -> tuple[Builder, list, list]:
    """The whole portable graph: (builder with nodes/initializers, graph inputs, graph outputs).

    window_cache: sliding layers keep only the last W-1 cache slots (`layers.window_masks`); False keeps all."""
    cfg = ckpt.config
    fam = graph_module(cfg)
    b = Builder()
    b.use_domain(DOMAIN, DOMAIN_VERSION)
    w = Weights(b, ckpt, storage)
    L, Hkv, D, V, H = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size, cfg.hidden_size

    input_ids = tensor_value(io.INPUT_IDS, INT64, [BATCH, SEQ])
    attention_mask = tensor_value(io.ATTENTION_MASK, INT64, [BATCH, TOTAL])
    position_ids = tensor_value(io.POSITION_IDS, INT64, [BATCH, SEQ])
    windowed = [window_cache and cfg.window(i) > 0 for i in range(L)]
    pasts = [tuple(tensor_value(n, FLOAT, [BATCH, Hkv, PAST_W if windowed[i] else PAST, D]) for n in io.past_names(i))
             for i in range(L)]

    x = fam.embed(b, cfg, w, input_ids, position_ids)  # [B,S,H]
    positions = fam.positions(b, cfg, position_ids)
    windows = window_masks(b, cfg, input_ids, attention_mask, pasts) if window_cache else {}

    presents, hidden = [], []
    for i in range(L):
        mask, cut = windows.get(cfg.window(i), (attention_mask, None))
        x, pk, pv = fam.layer(b, cfg, w, i, x, positions, pasts[i], mask)
        if cut is not None:
            with b.scope(f"layers.{i}"):
                pk, pv = trim_present(b, pk, cut, "present_key"), trim_present(b, pv, cut, "present_value")
        dims = [BATCH, Hkv, PRESENT_W if cut is not None else TOTAL, D]
        presents += [set_output(v, n, FLOAT, dims) for v, n in zip((pk, pv), io.present_names(i))]
        if hidden_states:
            # The residual also feeds the next layer; an Identity gives the output its own name.
            with b.scope(f"layers.{i}"):
                h = b.op("Identity", x, role="hidden")
            hidden.append(set_output(h, io.hidden_name(i), FLOAT, [BATCH, SEQ, H]))

    with b.scope("final"):
        x = fam.final_norm(b, cfg, w, x)
    with b.scope("lm_head"):
        logits = fam.output(b, cfg, w, x, ckpt.output_name)
    logits = set_output(logits, io.LOGITS, FLOAT, [BATCH, SEQ, V])

    inputs = [input_ids, attention_mask, position_ids, *(v for pair in pasts for v in pair)]
    return b, inputs, [logits, *presents, *hidden]



