"""Weight-product speed without a model around it: a chain of decoder-shaped products, two kernels on the same
(bf16-rounded) weights: ORT's float32 MatMul against mxport's LinearBF16 (`--pair bf16`, the default), or ORT's
4-bit MatMulNBits against mxport's LinearQ4 (`--pair q4`).

    python examples/product_chain.py [--pair bf16|q4] [--layers 28] [--rows 1] [--threads 2] [--rounds 15]
                                     [--hidden 1024 --q 2048 --kv 1024 --inter 3072]

Each layer is the four products of a qwen3-0.6b layer at decode (fused q/k/v, o, fused gate/up, down), chained by
Slices so every product reads its own weights, as a decode step does: 28 layers are 440 M weights, far more than
the caches, so the time is the weights' trip from memory. Reports the median time per chain, the weight bytes read
per second, and each chain's largest difference from the float32 chain's output relative to its largest value
(bf16 rounding of the weights is in all of them, so for LinearBF16 this is summation order only; the 4-bit
chains add their quantization, each its own: MatMulNBits int4 block 32 at accuracy level 4, LinearQ4's
super-blocks). The numbers in docs/BENCHMARKS.md ("The exact mode at half the bytes", "int4 against genai int4")
come from this script.
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np


def shapes(hidden: int, q: int, kv: int, inter: int) -> list[tuple[int, int, int]]:
    """(K, N, width kept for the next product) of a layer's four products."""
    return [(hidden, q + 2 * kv, q), (q, hidden, hidden), (hidden, 2 * inter, inter), (inter, hidden, hidden)]


KINDS = {  # kind: (label, weight bytes per weight)
    "fp32": ("ORT MatMul, float32 [K, N]", 4.0),
    "bf16": ("mxport LinearBF16, bf16 [N, K]", 2.0),
    "nbits": ("ORT MatMulNBits, int4 block 32", 0.5 + 4 / 32),
    "q4": ("mxport LinearQ4, 4-bit super-blocks", 140 / 256),
}
PAIRS = {"bf16": ("fp32", "bf16"), "q4": ("nbits", "q4")}


def _product(kind: str, x: str, w: np.ndarray, name: str, y: str):
    """(initializers, node) of one product y = x · w (w bf16 [K, N]) in `kind`'s form."""
    from onnx import helper, numpy_helper

    if kind == "fp32":
        return [numpy_helper.from_array(w.astype(np.float32), name)], helper.make_node("MatMul", [x, name], [y])
    if kind == "bf16":
        return ([numpy_helper.from_array(np.ascontiguousarray(w.T), name)],
                helper.make_node("LinearBF16", [x, name], [y], domain="ai.mxport"))
    if kind == "nbits":
        from mxport.exporter.lower.dense import quantize_columns

        k, n = w.shape
        packed, scales = quantize_columns(w, 4)
        inits = [numpy_helper.from_array(packed.reshape(n, k // 32, 16), name),
                 numpy_helper.from_array(scales, name + "_s")]
        return inits, helper.make_node("MatMulNBits", [x, name, name + "_s"], [y], domain="com.microsoft", K=k, N=n,
                                       bits=4, block_size=32, accuracy_level=4)
    from mxport.ops import linear_q4

    packed, scales = linear_q4.quantize(np.ascontiguousarray(w.T))
    inits = [numpy_helper.from_array(packed, name), numpy_helper.from_array(scales, name + "_d")]
    return inits, helper.make_node("LinearQ4", [x, name, name + "_d"], [y], domain="ai.mxport")


def chain(kind: str, layers: int, rows: int, layer_shapes: list[tuple[int, int, int]], seed: int = 0):
    """The chain as an ONNX model, every product in `kind`'s form (KINDS), on the same random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for layer in range(layers):
        for j, (k, n, keep) in enumerate(layer_shapes):
            w = (rng.standard_normal((k, n), np.float32) * 0.02).astype(ml_dtypes.bfloat16)  # [K, N]
            y = f"y{layer}_{j}"
            more, node = _product(kind, x, w, f"w{layer}_{j}", y)
            inits += more
            nodes.append(node)
            if keep != n:
                nodes.append(helper.make_node("Slice", [y, "zero", f"keep{keep}", "last"], [f"z{layer}_{j}"]))
                x = f"z{layer}_{j}"
            else:
                x = y
    for keep in sorted({keep for _, _, keep in layer_shapes}):
        inits.append(numpy_helper.from_array(np.array([keep], np.int64), f"keep{keep}"))
    inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "last")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, layer_shapes[0][0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.mxport", 1),
                                                   helper.make_opsetid("com.microsoft", 1)])


def measure(layers: int, rows: int, threads: int, rounds: int, layer_shapes,
            pair: tuple[str, str] = ("fp32", "bf16")) -> dict[str, dict[str, float]]:
    """{kind: {"ms", "gb_s", "rel"}} for both chains of `pair`, rounds interleaved; rel against the float32 chain."""
    import onnxruntime as ort

    from mxport.ops import native

    def session(kind: str) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        # the other chain's session stays alive: its pool's threads must not spin on the cores after its run
        so.add_session_config_entry("session.force_spinning_stop", "1")
        if kind in ("bf16", "q4") and not native.register_kernels(so):
            raise SystemExit(f"mxport's native kernels are not built: {KINDS[kind][0]} would run its function body")
        return ort.InferenceSession(chain(kind, layers, rows, layer_shapes).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])

    x = np.random.default_rng(1).standard_normal((rows, layer_shapes[0][0])).astype(np.float32)
    reference = session("fp32").run(None, {"x": x})[0]  # released before the timed chains are built
    sessions = {kind: session(kind) for kind in pair}
    outs = {kind: s.run(None, {"x": x})[0] for kind, s in sessions.items()}
    times: dict[str, list[float]] = {kind: [] for kind in sessions}
    for _ in range(rounds):
        for kind, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"x": x})
            times[kind].append(time.perf_counter() - t)
    weights = layers * sum(k * n for k, n, _ in layer_shapes)
    scale = float(np.abs(reference).max()) or 1.0
    return {kind: {"ms": float(np.median(t)) * 1e3, "gb_s": weights * KINDS[kind][1] / float(np.median(t)) / 1e9,
                   "rel": float(np.abs(outs[kind] - reference).max()) / scale} for kind, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--rows", type=int, default=1, help="rows of A: 1 is decode, more is batched decode or prefill")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--q", type=int, default=2048, help="query width (heads x head_dim)")
    p.add_argument("--kv", type=int, default=1024, help="key (and value) width")
    p.add_argument("--inter", type=int, default=3072, help="MLP intermediate size")
    p.add_argument("--pair", choices=sorted(PAIRS), default="bf16",
                   help="bf16: ORT float32 MatMul vs LinearBF16; q4: ORT MatMulNBits int4 vs LinearQ4")
    args = p.parse_args(argv)
    pair = PAIRS[args.pair]
    result = measure(args.layers, args.rows, args.threads, args.rounds, shapes(args.hidden, args.q, args.kv, args.inter),
                     pair)
    for kind, r in result.items():
        print(f"{KINDS[kind][0]:36s} rows {args.rows}: {r['ms']:8.2f} ms  {r['gb_s']:5.1f} GB/s of weights  "
              f"rel {r['rel']:.1e}")
    names = {"fp32": "MatMul", "bf16": "LinearBF16", "nbits": "MatMulNBits", "q4": "LinearQ4"}
    print(f"{names[pair[1]]} / {names[pair[0]]} speed: {result[pair[0]]['ms'] / result[pair[1]]['ms']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
