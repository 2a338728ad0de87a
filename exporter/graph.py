"""Small onnx-ir building helpers: a node recorder with readable names, lazy initializers, constants.

    b = Builder()
    with b.scope("layers.3/attn"):
        q = b.op("MatMul", x, w, role="q_proj")            # node "layers.3/attn/q_proj", value "layers.3/attn/q_proj"
    w = b.lazy_initializer("lm_head.weight", ir.DataType.BFLOAT16, (H, V), produce)   # bytes read at save time
    model = b.model(inputs, outputs, functions=...)

Values flow through arguments and return values (docs/STYLE.md "Values, not name strings"); the Builder only
remembers what it recorded, in order, so that the same input always gives the same graph (names, node order,
initializer order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

OPSET = 23  # standard domain: RMSNormalization, Attention, ... (ORT 1.32 and onnx.reference both run it)
IR_VERSION = 11  # the IR version that introduced opset 23


class Builder:
    """Records nodes and initializers. Node and value names are `scope/role`, unique within the graph."""

    def __init__(self) -> None:
        self.nodes: list[ir.Node] = []
        self.initializers: list[ir.Value] = []
        self.opsets: dict[str, int] = {"": OPSET}
        self._scope: list[str] = []
        self._used: set[str] = set()
        self._consts: dict[tuple[str, str, bytes, tuple[int, ...]], ir.Value] = {}

    # ---- names --------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _unique(self, role: str) -> str:
        base = "/".join([*self._scope, role])
        name, n = base, 1
        while name in self._used:
            name, n = f"{base}_{n}", n + 1
        self._used.add(name)
        return name

    # ---- nodes --------------------------------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        *inputs: ir.Value | None,
        role: str | None = None,
        domain: str = "",
        outputs: int = 1,
        **attributes: Any,
    ) -> Any:
        """Append one node; returns its output Value, or a tuple of Values when outputs > 1."""
        name = self._unique(role or op_type)
        outs = [ir.Value(name=name if outputs == 1 else f"{name}:{i}") for i in range(outputs)]
        attrs = ir.convenience.convert_attributes({k: v for k, v in attributes.items() if v is not None})
        node = ir.Node(domain, op_type, inputs, attributes=attrs, outputs=outs, name=name)
        self.nodes.append(node)
        return outs[0] if outputs == 1 else tuple(outs)

    def use_domain(self, domain: str, version: int) -> None:
        self.opsets[domain] = version

    # ---- initializers -------------------------------------------------------------------------------------
    def initializer(self, name: str, tensor: ir.TensorProtocol) -> ir.Value:
        if name in self._used:
            raise ValueError(f"initializer name {name!r} is already used in the graph")
        self._used.add(name)
        tensor.name = name
        value = ir.Value(
            name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
        )
        self.initializers.append(value)
        return value

    def lazy_initializer(
        self, name: str, dtype: ir.DataType, shape: Sequence[int], produce: Callable[[], np.ndarray]
    ) -> ir.Value:
        """An initializer whose bytes come from `produce()` only when the model is saved (streamed out)."""
        shape = tuple(int(d) for d in shape)

        def make() -> ir.TensorProtocol:
            array = np.ascontiguousarray(produce())
            if array.shape != shape or ir.DataType.from_numpy(array.dtype) != dtype:
                raise ValueError(f"{name}: produced {array.dtype}{list(array.shape)}, declared {dtype}{list(shape)}")
            return ir.tensor(array, name=name)

        return self.initializer(name, ir.LazyTensor(make, dtype=dtype, shape=ir.Shape(shape), name=name))

    def const(self, value: Any, dtype: Any = None, role: str = "const") -> ir.Value:
        """A small constant initializer, shared by every user of the same value (not scoped)."""
        array = np.asarray(value, dtype=dtype)
        key = (role, str(array.dtype), array.tobytes(), array.shape)
        if key not in self._consts:
            name, n = f"const/{role}", 1
            while name in self._used:
                name, n = f"const/{role}_{n}", n + 1
            self._consts[key] = self.initializer(name, ir.tensor(array, name=name))
        return self._consts[key]

    # ---- model --------------------------------------------------------------------------------------------
    def model(
        self,
        inputs: Sequence[ir.Value],
        outputs: Sequence[ir.Value],
        *,
        name: str = "main_graph",
        functions: Sequence[ir.Function] = (),
        metadata: dict[str, str] | None = None,
    ) -> ir.Model:
        graph = ir.Graph(
            inputs=list(inputs),
            outputs=list(outputs),
            nodes=self.nodes,
            initializers=self.initializers,
            opset_imports=dict(self.opsets),
            name=name,
        )
        model = ir.Model(graph, ir_version=IR_VERSION, producer_name="mxport", functions=list(functions))
        if metadata:
            model.metadata_props.update(metadata)
        return model


def tensor_value(name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> ir.Value:
    """A graph input/output value with a (partly symbolic) shape: ints are fixed, strings are named dims."""
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(list(shape)))


def set_output(value: ir.Value, name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> ir.Value:
    """Rename `value` (a node output) to the graph output `name` and give it its declared type and shape."""
    value.name = name
    value.type = ir.TensorType(dtype)
    value.shape = ir.Shape(list(shape))
    return value
