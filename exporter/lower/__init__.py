"""Lowering: rewrite the portable graph for an ONNX Runtime execution provider, one small rule at a time.

    lower(model, target="cpu", experts="float32", dtype="float32", dense="float32") -> model (rewritten in place)

    target    rules, in order
    (any)     --experts mxfp4: float experts -> MXFP4 first (experts_mxfp4.py)
    portable  none otherwise
    cpu       fused QKV, SimplifiedLayerNorm, SkipSimplifiedLayerNorm, SkipLayerNorm, GroupQueryAttention,
              MoE / QMoE by --experts (moe.py; mxfp4 keeps ai.mxport.MoEMXFP4 for mxport's native kernel),
              tied head MatMul(Transpose(E)) -> FusedMatMul(E){transB} (last)
    cuda      the same; experts=mxfp4 -> QMoE quant_type='fp4'; --dtype float16 | bfloat16 (precision.py)
    --dense   int8 | int4 -> MatMulNBits (dense.py), router excepted; bfloat16 -> ai.mxport.LinearBF16 over the stored
              bf16, tied head included (bf16.py); q4 -> ai.mxport.LinearQ4, super-blocks of 256 (q4.py)

    Which values each target takes, which are exact and which need mxport's native kernels: the mode table,
    mxport.contract.modes (its one validator, `check`, runs first).
    last_logits (any target, first): logits of the last position only, [B,1,V] (logits.py; changes the model I/O;
              report()["last_logits"] says whether the graph has them)
    cpu, cuda: a Cast of a weight whose output exceeds ORT's 1 GiB folding limit is stored cast (casts.py)

Every rule lives in its own module (moe, attention, norm, linear, dense, tied_head) as pattern / check / rewrite; `rules.apply`
records what was rewritten and what was refused with the reason (model.metadata_props["mxport.lowering"]).
A refused node stays portable, so a lowered graph is always a correct graph. docs/LOWERING.md has the
numbers each mode costs.
"""

from __future__ import annotations

import json

import onnx_ir as ir

from mxport.contract.modes import DEFAULT_ACCURACY_LEVEL, check
from mxport.contract.progress import Progress

from . import precision, rules
from .attention import LowerAttention
from .bf16 import DenseBF16
from .casts import materialize_large_casts
from .dense import DenseNBits
from .q4 import DenseQ4
from .layernorm import SkipLayerNorm
from .experts_mxfp4 import EncodeExpertsMXFP4
from .linear import FuseSiblingLinear
from . import logits as logits_rule
from .logits import LastLogits
from .moe import LowerMoE
from .norm import SimplifiedNorm, SkipSimplifiedNorm
from .tied_head import TiedHead

RULES = {
    "portable": (),
    "cpu": (FuseSiblingLinear(), SimplifiedNorm(), SkipSimplifiedNorm(), SkipLayerNorm(), LowerAttention(), LowerMoE()),
    "cuda": (FuseSiblingLinear(), SimplifiedNorm(), SkipSimplifiedNorm(), SkipLayerNorm(), LowerAttention(), LowerMoE()),
}
METADATA_KEY = "mxport.lowering"


def lower(model: ir.Model, *, target: str, experts: str = "mxfp4", dtype: str = "float32",
          dense: str = "float32", last_logits: bool = False, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
          progress: Progress | None = None) -> ir.Model:
    """Rewrite `model` (the portable graph) for `target`; returns it. Raises MxportError for bad options
    (mxport.contract.modes.check: the mode table says which values each target takes).

    accuracy_level: of the CPU quantized GEMMs (QMoE 4-bit experts, MatMulNBits dense weights), ORT's meaning:
    4 = int8 activations (its fast kernels, which prepack weights with per-block sums: more memory), 0 or 1 =
    float32 activations (weights used as stored: less memory, slower decode). 8-bit QMoE has no float32 kernel.
    progress("lower RULE", nodes done, nodes matched) hears each rule (mxport.contract.progress)."""
    modes = check(target=target, experts=experts, dense=dense, dtype=dtype, accuracy_level=accuracy_level)
    target, experts, dense, dtype = modes.target, modes.experts, modes.dense, modes.dtype
    ctx = rules.Context(model=model, target=target, experts=experts, dtype=dtype, accuracy_level=accuracy_level,
                        progress=progress)
    # --experts mxfp4: float experts are encoded first, on every target (the MoE rule then sees MXFP4 experts)
    # --last-logits first: it slices the portable head's input, whichever rule replaces the head later (logits.py)
    chosen = ([LastLogits()] if last_logits else []) + ([EncodeExpertsMXFP4()] if experts == "mxfp4" else [])
    chosen += list(RULES[target])
    if dense == "bfloat16":
        chosen.append(DenseBF16())  # after fused QKV, which keeps the bf16 weight and its Cast
    elif dense == "q4":
        chosen.append(DenseQ4())  # after MoE, like MatMulNBits: the router is recognised by it
    elif dense != "float32":
        chosen.append(DenseNBits(bits=8 if dense == "int8" else 4))  # after MoE: the router is recognised by it
    if target != "portable":
        chosen.append(TiedHead())  # last: --dense quantizes a tied head from the table's rows before it
    rules.apply(chosen, ctx)
    rules.remove_dead(ctx)
    if dtype != "float32":
        precision.to_half(ctx, dtype)  # whole-graph pass after the rules (precision.py)
    if target != "portable" and materialize_large_casts(ctx):  # Casts ORT would run every call (casts.py)
        rules.remove_dead(ctx)  # the bf16 sources
    done = ctx.report.as_dict()
    # last_logits: what the graph has (a refused head keeps [B,S,V] logits; the refusal names it)
    model.metadata_props[METADATA_KEY] = json.dumps(
        {"target": target, "experts": experts, "dtype": dtype, "dense": dense,
         "last_logits": last_logits and logits_rule.applied(done), "accuracy_level": accuracy_level, **done},
        sort_keys=True)
    return model


def report(model: ir.Model) -> dict:
    """What `lower` did to `model` (empty for a model that was never lowered)."""
    text = model.metadata_props.get(METADATA_KEY)
    return json.loads(text) if text else {}
