"""Expert weights of sparse MoE layers as graph initializers: stacked from the checkpoint one expert at a time, and
encoded to MXFP4 at export when asked (`--experts mxfp4` on a checkpoint whose experts are float).

    ExpertStack(ckpt, name)        lazy [E, R, C] tensor in the stored float dtype (bf16 stays bf16) holding the
                                   checkpoint's canonical `name`; `.expert(e)` reads expert e alone [R, C]
    experts_initializer(b, ckpt, name) -> ir.Value     that tensor as an initializer named `name`
    mxfp4_encoded(tensor, name)    -> (blocks [E, R, C/32, 16], scales [E, R, C/32]) lazy initializers

Memory: the checkpoint reader stacks per-expert files (`mlp.experts.{j}.gate_proj.weight` ...) into the canonical
[E, R, C] form row by row (exporter/checkpoint.py, Source.parts), so the whole stack is one layer's expert tensor
as stored; the MXFP4 encoding reads one expert at a time and encodes it in row chunks of ENCODE_VALUES, so its
float32 temporaries stay ~100 MB whatever the model, and the output (blocks + scales, 0.53 byte per weight) is the
only layer-sized array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from mxport.errors import MxportError
from mxport.ops import mxfp4

ENCODE_VALUES = 1 << 22  # float values encoded per step (16 MB of float32 input, ~5x that in temporaries)


class ExpertStack(ir.LazyTensor):
    """The canonical experts tensor `name` [E, R, C] of a checkpoint, read when saved; `.expert(e)` reads one."""

    def __init__(self, ckpt, name: str) -> None:
        spec = ckpt.spec(name)
        self.ckpt, self.source_name = ckpt, name
        self.stored_dtype = np.dtype(spec.dtype)
        super().__init__(self._whole, dtype=ir.DataType.from_numpy(self.stored_dtype), shape=ir.Shape(spec.shape),
                         name=name)

    def expert(self, e: int) -> np.ndarray:
        """Expert e [R, C] as stored; the file mappings are dropped after the read (RSS stays bounded)."""
        try:
            return np.asarray(self.ckpt.get_rows(self.source_name, e, e + 1))[0]
        finally:
            self.ckpt.close()

    def _whole(self) -> ir.TensorProtocol:
        out = np.empty(tuple(self.shape), dtype=self.stored_dtype)  # [E, R, C]
        for e in range(out.shape[0]):
            out[e] = self.expert(e)
        return ir.tensor(out, name=self.source_name)


def experts_initializer(b, ckpt, name: str) -> ir.Value:
    """The canonical experts tensor `name` as a lazy initializer in its stored dtype (Builder `b`)."""
    return b.initializer(name, ExpertStack(ckpt, name))


def expert_reader(tensor: ir.TensorProtocol) -> Callable[[int], np.ndarray]:
    """e -> expert e [R, C] of an [E, R, C] tensor: one expert's bytes for an ExpertStack, else the whole tensor
    is read once (a tensor built in memory, or gpt-oss's transposed dense experts) and indexed."""
    if isinstance(tensor, ExpertStack):
        return tensor.expert
    whole: list[np.ndarray] = []

    def read(e: int) -> np.ndarray:
        if not whole:
            whole.append(tensor.numpy())
        return whole[0][e]

    return read


def encode_experts(read: Callable[[int], np.ndarray], shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """MXFP4-encode [E, R, C] float experts (ops.mxfp4.encode, OCP MX v1.0) one expert and one row chunk at a time.

    Returns (blocks uint8 [E, R, C/32, 16], scales uint8 [E, R, C/32]); each row is encoded on its own, so the
    result equals encode() of the whole tensor."""
    E, R, C = shape
    blocks = np.empty((E, R, C // mxfp4.BLOCK_SIZE, mxfp4.BYTES_PER_BLOCK), np.uint8)
    scales = np.empty((E, R, C // mxfp4.BLOCK_SIZE), np.uint8)
    step = max(1, ENCODE_VALUES // C)
    for e in range(E):
        w = read(e)  # [R, C] as stored
        for a in range(0, R, step):
            blocks[e, a : a + step], scales[e, a : a + step] = mxfp4.encode(np.asarray(w[a : a + step], np.float32))
    return blocks, scales


def mxfp4_encoded(tensor: ir.TensorProtocol, name: str) -> tuple[ir.Value, ir.Value]:
    """Lazy MXFP4 halves `{name}_blocks`, `{name}_scales` of float experts `tensor` [E, R, C].

    Both come from one encoding: whichever ir.save writes first encodes, the other takes its half (then the
    shared result is dropped)."""
    E, R, C = (int(d) for d in tensor.shape)
    if C % mxfp4.BLOCK_SIZE:
        raise ValueError(f"{name}: rows of {C} values are not a multiple of the MXFP4 block ({mxfp4.BLOCK_SIZE})")
    read = expert_reader(tensor)
    shared: dict[str, object] = {}  # "pair": the layer's encoding while one half is still unwritten; "taken"

    def half(i: int) -> Callable[[], ir.TensorProtocol]:
        def make() -> ir.TensorProtocol:
            if "pair" not in shared:
                try:
                    shared["pair"], shared["taken"] = encode_experts(read, (E, R, C)), set()
                except MxportError:
                    raise
                except ValueError as exc:  # mxfp4.encode: non-finite values (exported with allow_non_finite)
                    raise MxportError(f"{name}: cannot encode to MXFP4 ({exc}); use --experts float32") from None
            out = shared["pair"][i]
            shared["taken"].add(i)
            if len(shared["taken"]) == 2:
                shared.clear()  # both halves handed out: drop the layer's encoding
            return ir.tensor(out, name=names[i])

        return make

    names = (name + mxfp4.HF_SUFFIXES[0], name + mxfp4.HF_SUFFIXES[1])
    shapes = ((E, R, C // mxfp4.BLOCK_SIZE, mxfp4.BYTES_PER_BLOCK), (E, R, C // mxfp4.BLOCK_SIZE))
    values = []
    for i in (0, 1):
        lazy = ir.LazyTensor(half(i), dtype=ir.DataType.UINT8, shape=ir.Shape(shapes[i]), name=names[i])
        values.append(ir.Value(name=names[i], shape=ir.Shape(shapes[i]), type=ir.TensorType(ir.DataType.UINT8),
                               const_value=lazy))
    return values[0], values[1]
