"""Lowering: rewrite the portable graph for an ONNX Runtime execution provider, one small rule at a time.

    lower(model, target="cpu", experts="fp32", dtype="float32", dense="float32") -> model (rewritten in place)

    target    rules, in order                                              experts modes        dtypes
    (any)     --experts mxfp4: float experts -> MXFP4 first (experts_mxfp4.py)
    portable  none otherwise                                               mxfp4 | float        float32
    cpu       fused QKV, SimplifiedLayerNorm, SkipSimplifiedLayerNorm,     fp32 | int8 | int4   float32
              SkipLayerNorm, GroupQueryAttention, MoE / QMoE               | mxfp4 (ai.mxport.MoEMXFP4
                                                                           kept for mxport's native kernel)
              tied head MatMul(Transpose(E)) -> FusedMatMul(E){transB} (last)
    cuda      the same; experts=mxfp4 -> QMoE quant_type='fp4'            mxfp4 | fp32 | int8 | int4   float32
                                                                           | float16 | bfloat16 (precision.py)

    experts: mxfp4 = MXFP4 experts (kept as stored, or encoded at export from float ones: lossy); float = a
             checkpoint's float experts as stored (portable only; bf16 stays bf16); fp32 | int8 | int4 = ORT's
             MoE / QMoE (int8 is exact from MXFP4, a block-wise quantization from float)
    dense (cpu, cuda): float32 keeps MatMul (exact); int8 | int4 -> MatMulNBits (dense.py), router excepted;
                       bf16 (cpu) -> ai.mxport.LinearBF16 over the stored bf16, tied head included (bf16.py, exact; native kernel)
                       q4 (cpu) -> ai.mxport.LinearQ4, 4 bits in super-blocks of 256 (q4.py, lossy; native kernel)
    last_logits (any target): logits of the last position only, [B,1,V] (logits.py; changes the model I/O)
    cpu, cuda: a Cast of a weight whose output exceeds ORT's 1 GiB folding limit is stored cast (casts.py)

Every rule lives in its own module (moe, attention, norm, linear, dense, tied_head) as pattern / check / rewrite; `rules.apply`
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
from .bf16 import DenseBF16
from .casts import materialize_large_casts
from .dense import DenseNBits
from .q4 import DenseQ4
from .layernorm import SkipLayerNorm
from .experts_mxfp4 import EncodeExpertsMXFP4
from .linear import FuseSiblingLinear
from .logits import LastLogits
from .moe import LowerMoE
from .norm import SimplifiedNorm, SkipSimplifiedNorm
from .tied_head import TiedHead

TARGETS = ("portable", "cpu", "cuda")
EXPERTS = ("mxfp4", "fp32", "int8", "int4", "float")
DTYPES = ("float32", "float16", "bfloat16")
DENSE = ("float32", "int8", "int4", "q4", "bf16")

RULES = {
    "portable": (),
    "cpu": (FuseSiblingLinear(), SimplifiedNorm(), SkipSimplifiedNorm(), SkipLayerNorm(), LowerAttention(), LowerMoE()),
    "cuda": (FuseSiblingLinear(), SimplifiedNorm(), SkipSimplifiedNorm(), SkipLayerNorm(), LowerAttention(), LowerMoE()),
}
METADATA_KEY = "mxport.lowering"


ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # ORT's accuracy_level of MatMulNBits / QMoE (minimum accuracy of the CPU GEMMs)
DEFAULT_ACCURACY_LEVEL = 4


def lower(model: ir.Model, *, target: str, experts: str = "mxfp4", dtype: str = "float32",
          dense: str = "float32", last_logits: bool = False, accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> ir.Model:
    """Rewrite `model` (the portable graph) for `target`; returns it. Raises MxportError for bad options.

    accuracy_level: of the CPU quantized GEMMs (QMoE 4-bit experts, MatMulNBits dense weights), ORT's meaning:
    4 = int8 activations (its fast kernels, which prepack weights with per-block sums: more memory), 0 or 1 =
    float32 activations (weights used as stored: less memory, slower decode). 8-bit QMoE has no float32 kernel."""
    for option, value, allowed in (("target", target, TARGETS), ("experts", experts, EXPERTS), ("dtype", dtype, DTYPES),
                                   ("dense", dense, DENSE)):
        if value not in allowed:
            raise MxportError(f"lower: unknown {option} {value!r}; expected one of {', '.join(allowed)}")
    if target == "portable" and (experts not in ("mxfp4", "float") or (dense, dtype) != ("float32", "float32")):
        raise MxportError(f"lower: --experts {experts} --dense {dense} --dtype {dtype} need --target cpu or cuda "
                          "(the portable graph keeps MXFP4 or float experts, float32 dense weights and float32 math)")
    if target != "portable" and experts == "float":
        raise MxportError(f"lower: --experts float keeps a checkpoint's float experts in the portable graph; "
                          f"--target {target} takes fp32 (exact), int8, int4 or mxfp4")
    if accuracy_level not in ACCURACY_LEVELS:
        raise MxportError(f"lower: --accuracy-level must be one of {', '.join(map(str, ACCURACY_LEVELS))}, "
                          f"found {accuracy_level}")
    if experts == "int8" and target == "cpu" and accuracy_level != 4:
        raise MxportError("lower: --experts int8 has no float32-activation kernel in ONNX Runtime (8-bit QMoE "
                          "always quantizes activations to int8): use --accuracy-level 4, or --experts int4 / fp32")
    if target == "cpu" and dtype == "bfloat16":
        raise MxportError("lower: --dtype bfloat16 is for --target cuda: ORT's CPU provider has no bfloat16 MatMul "
                          "(use --dtype float16 or float32 on cpu)")
    if dense == "q4" and accuracy_level != 4:
        raise MxportError("lower: --dense q4 (ai.mxport.LinearQ4) always quantizes activations to int8 (accuracy "
                          "level 4); for float32 activations use --dense int4 --accuracy-level 0")
    if dense in ("bf16", "q4") and target != "cpu":
        op_type = "LinearBF16" if dense == "bf16" else "LinearQ4"
        raise MxportError(f"lower: --dense {dense} (ai.mxport.{op_type}) has a native kernel for --target cpu only")
    ctx = rules.Context(model=model, target=target, experts=experts, dtype=dtype, accuracy_level=accuracy_level)
    # --experts mxfp4: float experts are encoded first, on every target (the MoE rule then sees MXFP4 experts)
    chosen = ([EncodeExpertsMXFP4()] if experts == "mxfp4" else []) + list(RULES[target])
    if dense == "bf16":
        chosen.append(DenseBF16())  # after fused QKV, which keeps the bf16 weight and its Cast
    elif dense == "q4":
        chosen.append(DenseQ4())  # after MoE, like MatMulNBits: the router is recognised by it
    elif dense != "float32":
        chosen.append(DenseNBits(bits=8 if dense == "int8" else 4))  # after MoE: the router is recognised by it
    if last_logits:
        chosen.append(LastLogits())  # changes the model I/O: logits [B,1,V]
    if target != "portable":
        chosen.append(TiedHead())  # last: --dense quantizes a tied head from the table's rows before it
    rules.apply(chosen, ctx)
    rules.remove_dead(ctx)
    if dtype != "float32":
        precision.to_half(ctx, dtype)  # whole-graph pass after the rules (precision.py)
    if target != "portable" and materialize_large_casts(ctx):  # Casts ORT would run every call (casts.py)
        rules.remove_dead(ctx)  # the bf16 sources
    model.metadata_props[METADATA_KEY] = json.dumps(
        {"target": target, "experts": experts, "dtype": dtype, "dense": dense, "last_logits": last_logits,
         "accuracy_level": accuracy_level, **ctx.report.as_dict()}, sort_keys=True
    )
    return model


def report(model: ir.Model) -> dict:
    """What `lower` did to `model` (empty for a model that was never lowered)."""
    text = model.metadata_props.get(METADATA_KEY)
    return json.loads(text) if text else {}
