"""Weights too large for ONNX Runtime's constant folding are stored in the type they are used in.

    W_bf16 (initializer) ─ Cast(to=float32 | float16) ─► MatMul      ==>   W_float (initializer) ─► MatMul

The exporter keeps dense matrices as the checkpoint's bf16 bytes followed by a Cast (exact, half the file). ORT
folds such a Cast once at load, except when its output is larger than its constant-folding limit
(`optimization.constant_folding_max_output_size_in_bytes`, 1 GiB by default): then the Cast runs on every call.
For gpt-oss-20b that is the lm_head, 201088 × 2880: 1.16 GB of bf16 converted to 2.3 GB of float32 before every
decode step's MatMul. A lowered graph is for speed, so such Casts become initializers of the cast type (written
lazily at save time, one tensor in memory); smaller ones are left to ORT, which folds them to the same bytes.
The portable graph keeps its bf16 (mxport's own sessions raise the folding limit for it: runtime/execution/step_model.py).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from .rules import Context, add_initializer, attr, const, lazy

ORT_FOLDING_LIMIT = 1 << 30  # bytes: onnxruntime's default constant_folding_max_output_size_in_bytes


def materialize_large_casts(ctx: Context, limit: int = ORT_FOLDING_LIMIT) -> int:
    """Replace every Cast of an initializer whose output exceeds `limit` bytes by an initializer of the cast type.

    Returns how many were replaced (recorded in the lowering report as `materialize_cast`)."""
    done = 0
    for node in list(ctx.graph):
        if node.op_type != "Cast" or node.domain != "" or node.graph is None:
            continue
        source = const(node.inputs[0])
        if source is None:
            continue
        to = ir.DataType(attr(node, "to"))
        shape = [int(d) for d in source.shape]
        if math.prod(shape) * to.itemsize <= limit:
            continue
        out = node.outputs[0]
        if out.is_graph_output():
            continue  # a model output must stay a computed value
        target = to.numpy()

        def make(source=source, target=target) -> np.ndarray:
            return np.asarray(source.numpy()).astype(target)

        value = add_initializer(ctx, lazy(f"{node.inputs[0].name}.{to.name.lower()}", to, shape, make))
        out.replace_all_uses_with(value)
        ctx.graph.remove(node, safe=True)
        done += 1
    if done:
        ctx.report.applied["materialize_cast"] += done
    return done
