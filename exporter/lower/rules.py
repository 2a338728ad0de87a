"""The rule machinery of lowering: pattern / check / rewrite on an onnx-ir model (docs/STYLE.md "Rewrites are rules").

A rule is a small object with three methods:

    pattern(node)          -> bool         cheap structural test (op type, domain)
    check(node, ctx)       -> str | None   None when the rule applies, else the reason it does not
    rewrite(node, ctx)     -> None         replace `node` (and whatever it absorbs) in ctx.graph

`apply(rules, ctx)` walks the graph once per rule, in order, and records in `ctx.report` every rewrite and
every refusal with its reason. A refused node stays as it was: the portable graph is always correct, a
lowering only makes it faster, so a rule that cannot prove its rewrite exact-or-declared never fires.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import onnx_ir as ir

from mxport.contract.progress import report

MS_DOMAIN = "com.microsoft"
MS_VERSION = 1


class Rule(Protocol):
    name: str

    def pattern(self, node: ir.Node) -> bool: ...

    def check(self, node: ir.Node, ctx: Context) -> str | None: ...

    def rewrite(self, node: ir.Node, ctx: Context) -> None: ...


@dataclass
class Report:
    """What lowering did: rewrites per rule and refusals with their reasons."""

    applied: Counter = field(default_factory=Counter)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, node name, reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": dict(self.applied),
            "refused": [{"rule": r, "node": n, "reason": why} for r, n, why in self.refused],
        }


@dataclass
class Context:
    """Everything a rule may read: the model, the chosen options, values shared between rewrites."""

    model: ir.Model
    target: str
    experts: str
    dtype: str
    accuracy_level: int = 4  # CPU quantized GEMMs (QMoE 4-bit, MatMulNBits): 4 = int8 activations, 0 = float32
    report: Report = field(default_factory=Report)
    shared: dict[Any, Any] = field(default_factory=dict)  # values computed once per graph (seqlens_k, ...)
    progress: Any = None  # progress("lower RULE", nodes done, nodes matched): mxport.contract.progress

    @property
    def graph(self) -> ir.Graph:
        return self.model.graph

    def use_ms_domain(self) -> None:
        self.model.opset_imports.setdefault(MS_DOMAIN, MS_VERSION)


def apply(rules: Sequence[Rule], ctx: Context) -> Report:
    for rule in rules:
        matched = [node for node in ctx.graph if rule.pattern(node)]
        for done, node in enumerate(matched):
            report(ctx.progress, f"lower {rule.name}", done, len(matched))
            if node.graph is None or not rule.pattern(node):
                continue  # removed by an earlier rewrite
            reason = rule.check(node, ctx)
            if reason is not None:
                ctx.report.refused.append((rule.name, node.name or node.op_type, reason))
                continue
            rule.rewrite(node, ctx)
            ctx.report.applied[rule.name] += 1
        report(ctx.progress, f"lower {rule.name}", len(matched), len(matched))
    return ctx.report


# ---- helpers shared by the rules ----------------------------------------------------------------------------
def const(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The constant tensor behind `value` (initializer or Constant node), else None. Never reads the bytes."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attr = producer.attributes.get("value")
        return attr.value if attr is not None else None
    return None


def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    a = node.attributes.get(name)
    return default if a is None else a.value


def lazy(name: str, dtype: ir.DataType, shape: Sequence[int], make: Any) -> ir.Value:
    """An initializer whose bytes are produced by `make() -> np.ndarray` only when the model is saved.

    This keeps lowering streaming: a dequantized or repacked expert tensor exists in memory one tensor at a
    time while `ir.save` writes it, never the whole model.
    """

    def produce() -> ir.TensorProtocol:
        array = make()
        assert tuple(array.shape) == tuple(shape), f"{name}: produced {array.shape}, declared {tuple(shape)}"
        return ir.tensor(array, dtype=dtype, name=name)

    tensor = ir.LazyTensor(produce, dtype=dtype, shape=ir.Shape(list(shape)), name=name)
    return ir.Value(name=name, shape=ir.Shape(list(shape)), type=ir.TensorType(dtype), const_value=tensor)


def lazy_pair(first: tuple[str, ir.DataType, Sequence[int]], second: tuple[str, ir.DataType, Sequence[int]],
              make: Any) -> tuple[ir.Value, ir.Value]:
    """Two lazy initializers (name, dtype, shape) whose bytes come from one `make() -> (a, b)` at save time, e.g.
    a quantization's weights and scales: whichever is written first computes the pair, and writing the second
    one frees it (ir.save writes initializers in order, the first before the second)."""
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def take(i: int):
        def produce() -> np.ndarray:
            if "pair" not in cache:
                cache["pair"] = make()
            out = cache["pair"][i]
            if i == 1:
                cache.clear()
            return out

        return produce

    return lazy(*first, take(0)), lazy(*second, take(1))


def add_initializer(ctx: Context, value: ir.Value) -> ir.Value:
    base, i = value.name, 1
    while value.name in ctx.graph.initializers:
        value.name = f"{base}_{i}"
        i += 1
    ctx.graph.register_initializer(value)
    return value


def attach_function(model: ir.Model, op_type: str) -> None:
    """Give the model the function body of ai.mxport's `op_type` (exports carry the bodies of the ops in
    ops._WHEN_USED only when used), so a host without mxport's kernels runs the node, and the opset import."""
    from mxport import ops

    if (ops.DOMAIN, op_type, "") not in model.functions:
        for proto in ops.functions(used={op_type}):
            if proto.name == op_type:
                fn = ir.serde.deserialize_function(proto)
                model.functions[fn.identifier()] = fn
    model.opset_imports.setdefault(ops.DOMAIN, ops.VERSION)


def replace(ctx: Context, old: ir.Node, new_nodes: Sequence[ir.Node], new_outputs: Sequence[ir.Value | None]) -> None:
    """Insert `new_nodes` before `old`, move every use (graph outputs too) of old's outputs, remove `old`.

    The new outputs take over the old names, so graph I/O names (present.{i}.key, logits) never change.
    """
    ctx.graph.insert_before(old, list(new_nodes))
    for old_value, new_value in zip(old.outputs, new_outputs):
        if new_value is None:
            if old_value.uses() or old_value.is_graph_output():
                raise AssertionError(f"{old.name}: output {old_value.name} is used but has no replacement")
            continue
        move_uses(old_value, new_value)
    ctx.graph.remove(old, safe=True)


def adopt_tape(ctx: Context, tape: ir.tape.Tape, prefix: str) -> list[ir.Node]:
    """A tape's nodes named `{prefix}/{op}_{i}` (outputs too) and its initializers registered in the graph once;
    returns the nodes, for the caller to insert."""
    for value in tape.initializers:
        if value.name not in ctx.graph.initializers:
            ctx.graph.register_initializer(value)
    for i, node in enumerate(tape.nodes):
        node.name = f"{prefix}/{node.op_type}_{i}"
        for out in node.outputs:
            out.name = f"{prefix}/{node.op_type}_{i}"
    return list(tape.nodes)


def move_uses(old: ir.Value, new: ir.Value) -> None:
    """Every use of `old` (graph outputs too) reads `new`, which takes old's name, type and shape."""
    name, typ, shape = old.name, old.type, old.shape
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name = None
    new.name = name
    new.type = new.type or typ
    new.shape = new.shape or shape


def remove_dead(ctx: Context) -> None:
    """Drop nodes and initializers nothing reads any more (after rules absorbed their consumers)."""
    import onnx_ir.passes.common as common

    common.RemoveUnusedNodesPass()(ctx.model)
