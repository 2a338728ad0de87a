"""mxport.ops: the custom op set `ai.mxport`, version 1 (contract: docs/ARCHITECTURE.md, "Custom ops").

One module per op (MoE and MoEMXFP4 share ops/moe.py; their bias-free version 2, MoE_2 and MoEMXFP4_2, ops/moe_2.py), each with the op's schema docstring, its ONNX function
body (in the module's FUNCTIONS, an onnxscript function in OPSET) and its NumPy kernel for onnx.reference
(a class named like the op).

    functions()          FunctionProtos to put in ModelProto.functions (every body, incl. helpers they call)
    reference_kernels()  OpRun classes for onnx.reference.ReferenceEvaluator(model, new_ops=reference_kernels())
    opset_imports()      the opset imports a model using these ops needs
    make_node(...)       a NodeProto with every attribute filled in (onnx.reference ignores function defaults)
    make_model(...)      a ModelProto around a graph, with functions and opset imports attached
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

DOMAIN = "ai.mxport"
VERSION = 1
STANDARD_OPSET = 23  # the ONNX opset the function bodies are written in (ORT 1.32 CPU runs all of it)

# Op modules, in order. Each defines FUNCTIONS (its ops' onnxscript bodies), HELPERS (functions those bodies call)
# and one OpRun kernel class per op, named like the op. They load on first use (ALL_OPS, OPSET, functions(),
# reference_kernels()): importing onnxscript takes seconds, and `from mxport.ops import mxfp4` (the codec) must stay light.
_OP_MODULES = ("dequantize_mxfp4", "matmul_mxfp4", "linear_bf16", "linear_q4", "moe", "moe_2", "attention",
               "group_query_attention")
# Modules whose bodies a model carries only when it uses one of their ops (functions(used=...)); the others are
# attached to every export, as they were before these existed (gpt-oss exports stay byte-identical).
_WHEN_USED = ("moe_2", "linear_bf16", "linear_q4", "group_query_attention")


def __getattr__(name: str) -> Any:
    """Lazy module attributes: ALL_OPS (the op modules) and OPSET (the onnxscript Opset of the bodies)."""
    if name == "OPSET":
        from onnxscript.values import Opset

        globals()["OPSET"] = Opset(DOMAIN, VERSION)
        return globals()["OPSET"]
    if name == "ALL_OPS":
        globals()["ALL_OPS"] = tuple(importlib.import_module(f"{__name__}.{m}") for m in _OP_MODULES)
        return globals()["ALL_OPS"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def op_types() -> list[str]:
    """The op names of ai.mxport version 1."""
    ALL_OPS = __getattr__("ALL_OPS")  # noqa: N806
    return [body.name for module in ALL_OPS for body in module.FUNCTIONS]


def functions(used: set[str] | frozenset[str] | None = None) -> list[onnx.FunctionProto]:
    """Every op's function body and every helper they call (callees first), for ModelProto.functions.

    used: the ai.mxport op types a model uses; then a module in _WHEN_USED contributes its bodies only when one
    of its ops is among them (None: every module)."""
    ALL_OPS = __getattr__("ALL_OPS")  # noqa: N806
    modules = [m for m in ALL_OPS if used is None or m.__name__.rsplit(".", 1)[1] not in _WHEN_USED
               or any(body.name in used for body in m.FUNCTIONS)]
    bodies = [body for module in modules for body in (*module.HELPERS, *module.FUNCTIONS)]
    return [_explicit_loop_conditions(body.to_function_proto()) for body in bodies]


_TRUE = "mxport_loop_cond_true"


def _explicit_loop_conditions(proto: onnx.FunctionProto) -> onnx.FunctionProto:
    """Give every Loop an explicit `cond` input (a Constant true) where onnxscript leaves it empty.

    ONNX says an empty `cond` means true; onnx.reference (1.23) reads it as false and runs the Loop zero times.
    """
    import onnx

    loops = []

    def collect(nodes):
        for node in nodes:
            if node.op_type == "Loop" and node.domain in ("", "ai.onnx") and len(node.input) > 1 and not node.input[1]:
                loops.append(node)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g.node)

    collect(proto.node)
    if not loops:
        return proto
    for node in loops:
        node.input[1] = _TRUE
    true = onnx.helper.make_node("Constant", [], [_TRUE], value=onnx.helper.make_tensor(_TRUE, onnx.TensorProto.BOOL, [], [True]))
    nodes = [true, *proto.node]
    del proto.node[:]
    proto.node.extend(nodes)
    return proto


def reference_kernels() -> list[type]:
    """The ops' NumPy kernels (OpRun classes), for onnx.reference.ReferenceEvaluator(..., new_ops=reference_kernels()).

    Not the native C library of ops/native.py, which ONNX Runtime runs."""
    ALL_OPS = __getattr__("ALL_OPS")  # noqa: N806
    return [getattr(module, body.name) for module in ALL_OPS for body in module.FUNCTIONS]


def opset_imports() -> list[onnx.OperatorSetIdProto]:
    """Opset imports for a model that uses ai.mxport ops: the standard opset and ai.mxport."""
    import onnx

    return [onnx.helper.make_opsetid("", STANDARD_OPSET), onnx.helper.make_opsetid(DOMAIN, VERSION)]


def _function(op_type: str) -> onnx.FunctionProto:
    for proto in functions():
        if proto.name == op_type:
            return proto
    raise ValueError(f"{DOMAIN} has no op {op_type!r}; ops: {op_types()}")


def make_node(op_type: str, inputs: list[str], outputs: list[str], name: str | None = None, **attrs) -> onnx.NodeProto:
    """An ai.mxport node with every attribute written out (defaults from the function body filled in).

    onnx.reference does not apply FunctionProto attribute defaults, so nodes should carry all attributes.
    """
    import onnx

    proto = _function(op_type)
    known = {*proto.attribute, *(a.name for a in proto.attribute_proto)}  # required, with default
    unknown = set(attrs) - known
    if unknown:
        raise ValueError(f"{DOMAIN}.{op_type}: unknown attributes {sorted(unknown)}; known: {sorted(known)}")
    missing = [name for name in proto.attribute if name not in attrs]
    if missing:
        raise ValueError(f"{DOMAIN}.{op_type}: required attributes {missing} are missing")
    full = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute_proto}
    full.update(attrs)
    return onnx.helper.make_node(op_type, inputs, outputs, name=name, domain=DOMAIN, **full)


def make_model(graph: onnx.GraphProto, **kwargs) -> onnx.ModelProto:
    """A ModelProto for `graph` with the ai.mxport functions and opset imports attached (and the domains the bodies
    use: GroupQueryAttention's is com.microsoft). Bodies of _WHEN_USED modules come only where the graph uses them."""
    import onnx

    # the _WHEN_USED bodies only where used: GroupQueryAttention's is a contrib op, which onnx.reference cannot run
    bodies = functions(used={node.op_type for node in graph.node if node.domain == DOMAIN})
    imports = {i.domain: i for i in opset_imports()}
    for body in bodies:
        for used in body.opset_import:
            imports.setdefault(used.domain, used)
    return onnx.helper.make_model(graph, opset_imports=list(imports.values()), functions=bodies, **kwargs)
