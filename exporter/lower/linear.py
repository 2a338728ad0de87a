"""Fuse sibling linear layers (q, k, v projections of one normed input) into one MatMul + Split.

    n ─┬─ MatMul(Wq) ─ Add(bq) ─► q            n ─ MatMul([Wq|Wk|Wv]) ─ Add([bq|bk|bv]) ─ Split(axis -1) ─► q, k, v
       ├─ MatMul(Wk) ─ Add(bk) ─► k     ==>
       └─ MatMul(Wv) ─ Add(bv) ─► v

Weights are [in, out] initializers, optionally behind a Cast (bf16 kept as stored, cast to float32 in the
graph); the fused weight keeps that form. Each output column is the same dot product as before: exact.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .rules import Context, add_initializer, attr, const, lazy, move_uses


def weight_source(matmul: ir.Node) -> tuple[ir.Value, ir.TensorProtocol, int | None, bool] | None:
    """MatMul's constant B as (stored value, its tensor, Cast target or None, transposed), or None if computed.

    B is W, Cast(W), or Transpose(E or Cast(E)){perm [1, 0]} with E a 2-D table stored [N, K]: a tied output
    projection reading the embedding table (exporter/layers.tied_output); then transposed is True."""
    b, transposed = matmul.inputs[1], False
    producer = b.producer() if b is not None else None
    if producer is not None and producer.op_type == "Transpose" and producer.domain == "":
        if list(attr(producer, "perm", [1, 0])) != [1, 0]:
            return None
        b, transposed = producer.inputs[0], True
        producer = b.producer()
    cast_to = None
    if const(b) is None and producer is not None and producer.op_type == "Cast" and producer.domain == "":
        b, cast_to = producer.inputs[0], producer.attributes["to"].value
    tensor = const(b)
    if tensor is None or (transposed and len(tensor.shape) != 2):
        return None
    return b, tensor, cast_to, transposed


def _weight(matmul: ir.Node) -> tuple[ir.TensorProtocol, int | None] | None:
    """(stored [in,out] tensor, Cast target or None) behind MatMul input B: W or Cast(W); else None."""
    source = weight_source(matmul)
    return None if source is None or source[3] else (source[1], source[2])


def _bias(matmul: ir.Node) -> tuple[ir.Node, ir.TensorProtocol] | None:
    users = matmul.outputs[0].uses()
    if len(users) != 1 or matmul.outputs[0].is_graph_output():
        return None
    add = users[0].node
    if add.op_type != "Add" or add.domain != "":
        return None
    other = add.inputs[1] if add.inputs[0] is matmul.outputs[0] else add.inputs[0]
    tensor = const(other)
    if tensor is None or len(tensor.shape) != 1:
        return None
    return add, tensor


def _siblings(node: ir.Node) -> list[ir.Node]:
    """MatMuls reading the same A as `node`, with a constant 2-D weight, in graph order."""
    a = node.inputs[0]
    found = []
    for use in a.uses():
        m = use.node
        if m.op_type == "MatMul" and m.domain == "" and use.idx == 0 and m.graph is node.graph:
            w = _weight(m)
            if w is not None and len(w[0].shape) == 2:
                found.append(m)
    order = {id(n): i for i, n in enumerate(node.graph)}
    return sorted(found, key=lambda n: order[id(n)])


class FuseSiblingLinear:
    name = "fused_qkv"

    def pattern(self, node: ir.Node) -> bool:
        if node.op_type != "MatMul" or node.domain != "" or _weight(node) is None:
            return False
        group = _siblings(node)
        return len(group) >= 2 and group[0] is node  # the first of a group stands for it

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        group = _siblings(node)
        weights = [_weight(m) for m in group]
        if len({(w[0].shape[0], w[0].dtype, w[1]) for w in weights}) != 1:
            return "sibling weights differ in input size, dtype or cast"
        biases = [_bias(m) for m in group]
        if any(b is None for b in biases) and not all(b is None for b in biases):
            return "some siblings have a bias Add and some do not"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        group = _siblings(node)
        weights = [_weight(m) for m in group]
        biases = [_bias(m) for m in group]
        widths = [int(w[0].shape[1]) for w in weights]
        K, N = int(weights[0][0].shape[0]), sum(widths)
        stored, cast_to = weights[0][0].dtype, weights[0][1]
        prefix = (group[0].name or "linear").rsplit("/", 1)[0] + "/qkv"
        tensors = [w[0] for w in weights]
        w_value = add_initializer(ctx, lazy(f"{prefix}.weight", stored, [K, N],
                                            lambda: np.concatenate([t.numpy() for t in tensors], axis=1)))
        t = ir.tape.Tape()
        w_in = t.op("Cast", [w_value], {"to": cast_to}) if cast_to is not None else w_value
        y = t.op("MatMul", [node.inputs[0], w_in])
        if biases[0] is not None:
            bias_tensors = [b[1] for b in biases]
            b_value = add_initializer(ctx, lazy(f"{prefix}.bias", bias_tensors[0].dtype, [N],
                                                lambda: np.concatenate([b.numpy() for b in bias_tensors])))
            y = t.op("Add", [y, b_value])
        split = t.initializer(ir.tensor(np.asarray(widths, dtype=np.int64), name=f"{prefix}.split"), name=f"{prefix}.split")
        outs = t.op_multi_out("Split", [y, split], {"axis": -1}, num_outputs=len(group))
        for i, n in enumerate(t.nodes):
            n.name = f"{prefix}/{n.op_type}_{i}"
        add_initializer(ctx, split)
        ctx.graph.insert_before(node, list(t.nodes))
        for m, b, out in zip(group, biases, outs):
            last = b[0] if b is not None else m
            move_uses(last.outputs[0], out)
            ctx.graph.remove([b[0], m] if b is not None else [m], safe=True)
