"""Lowering: rewrite the portable graph for an ONNX Runtime execution provider, one small rule at a time.

    lower(model, target="cpu", experts="fp32", dtype="float32", dense="float32") -> model (rewritten in place)

    target    rules, in order                                              experts modes        dtypes
    portable  none (the portable graph; only the defaults)                 mxfp4                float32
    cpu       fused QKV, SimplifiedLayerNorm, SkipSimplifiedLayerNorm,     fp32 | int8 | int4   float32
              GroupQueryAttention, MoE / QMoE                              (mxfp4: MoE kept portable)
    cuda      the same; experts=mxfp4 -> QMoE quant_type='fp4'            mxfp4 | fp32 | int8 | int4   float32
                                                                           | float16 | bfloat16 (precision.py)

    dense (cpu, cuda): float32 keeps MatMul (exact); int8 | int4 -> MatMulNBits (dense.py), router excepted
    last_logits (any target): logits of the last position only, [B,1,V] (logits.py; changes the model I/O)

Every rule lives in its own module (moe, attention, norm, linear, dense) as pattern / check / rewrite; `rules.apply`
records what was rewritten and what was refused with the reason (model.metadata_props["mxport.lowering"]).
A refused node stays portable, so a lowered graph is always a correct graph. docs/LOWERING.md has the
numbers each mode costs.
"""

from __future__ import annotations

import json

import onnx_ir as ir

from mxport.errors import MxportError

from . import precision, rules
from .attention import LowerAttention
from .dense import DenseNBits
from .linear import FuseSiblingLinear
from .logits import LastLogits
from .moe import LowerMoE
from .norm import SimplifiedNorm, SkipSimplifiedNorm

TARGETS = ("portable", "cpu", "cuda")
EXPERTS = ("mxfp4", "fp32", "int8", "int4")
DTYPES = ("float32", "float16", "bfloat16")
DENSE = ("float32", "int8", "int4")

RULES = {
    "portable": (),
    "cpu": (FuseSiblingLinear(), SimplifiedNorm(), SkipSimplifiedNorm(), LowerAttention(), LowerMoE()),
    "cuda": (FuseSiblingLinear(), SimplifiedNorm(), SkipSimplifiedNorm(), LowerAttention(), LowerMoE()),
}
METADATA_KEY = "mxport.lowering"


def lower(model: ir.Model, *, target: str, experts: str = "mxfp4", dtype: str = "float32",
          dense: str = "float32", last_logits: bool = False) -> ir.Model:
    """Rewrite `model` (the portable graph) for `target`; returns it. Raises MxportError for bad options."""
    for option, value, allowed in (("target", target, TARGETS), ("experts", experts, EXPERTS), ("dtype", dtype, DTYPES),
                                   ("dense", dense, DENSE)):
        if value not in allowed:
            raise MxportError(f"lower: unknown {option} {value!r}; expected one of {', '.join(allowed)}")
    if target == "portable" and (experts, dense, dtype) != ("mxfp4", "float32", "float32"):
        raise MxportError(f"lower: --experts {experts} --dense {dense} --dtype {dtype} need --target cpu or cuda "
                          "(the portable graph keeps MXFP4 experts, float32 dense weights and float32 math)")
    if target == "cpu" and dtype == "bfloat16":
        raise MxportError("lower: --dtype bfloat16 is for --target cuda: ORT's CPU provider has no bfloat16 MatMul "
                          "(use --dtype float16 or float32 on cpu)")
    ctx = rules.Context(model=model, target=target, experts=experts, dtype=dtype)
    chosen = list(RULES[target])
    if dense != "float32":
        chosen.append(DenseNBits(bits=8 if dense == "int8" else 4))  # after MoE: the router is recognised by it
    if last_logits:
        chosen.append(LastLogits())  # changes the model I/O: logits [B,1,V]
    rules.apply(chosen, ctx)
    rules.remove_dead(ctx)
    if dtype != "float32":
        precision.to_half(ctx, dtype)  # whole-graph pass after the rules (precision.py)
    model.metadata_props[METADATA_KEY] = json.dumps(
        {"target": target, "experts": experts, "dtype": dtype, "dense": dense, "last_logits": last_logits,
         **ctx.report.as_dict()}, sort_keys=True
    )
    return model


def report(model: ir.Model) -> dict:
    """What `lower` did to `model` (empty for a model that was never lowered)."""
    text = model.metadata_props.get(METADATA_KEY)
    return json.loads(text) if text else {}
