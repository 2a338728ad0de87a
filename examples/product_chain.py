"""Weight-product speed without a model around it: a chain of decoder-shaped products, ORT's float32 MatMul against
mxport's LinearBF16 on the same (bf16-rounded) weights.

    python examples/product_chain.py [--layers 28] [--rows 1] [--threads 2] [--rounds 15] [--hidden 1024 --q 2048
                                     --kv 1024 --inter 3072]

Each layer is the four products of a qwen3-0.6b layer at decode (fused q/k/v, o, fused gate/up, down), chained by
Slices so every product reads its own weights, as a decode step does: 28 layers are 440 M weights, far more than
the caches, so the time is the weights' trip from memory. Reports the median time per chain, the weight bytes read
per second, and the largest difference between the two chains' outputs relative to the float32 one's largest
value (bf16 rounding of the weights is in both, so this is summation order only). The numbers in
docs/BENCHMARKS.md ("The exact mode at half the bytes") come from this script.
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np


def shapes(hidden: int, q: int, kv: int, inter: int) -> list[tuple[int, int, int]]:
    """(K, N, width kept for the next product) of a layer's four products."""
    return [(hidden, q + 2 * kv, q), (q, hidden, hidden), (hidden, 2 * inter, inter), (inter, hidden, hidden)]


def chain(kind: str, layers: int, rows: int, layer_shapes: list[tuple[int, int, int]], seed: int = 0):
    """The chain as an ONNX model: kind 'fp32' (MatMul on float32 [K, N]) or 'bf16' (LinearBF16 on bf16 [N, K])."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for layer in range(layers):
        for j, (k, n, keep) in enumerate(layer_shapes):
            w = (rng.standard_normal((k, n), np.float32) * 0.02).astype(ml_dtypes.bfloat16)  # [K, N]
            name, y = f"w{layer}_{j}", f"y{layer}_{j}"
            if kind == "fp32":
                inits.append(numpy_helper.from_array(w.astype(np.float32), name))
                nodes.append(helper.make_node("MatMul", [x, name], [y]))
            else:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))
                nodes.append(helper.make_node("LinearBF16", [x, name], [y], domain="ai.mxport"))
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
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.mxport", 1)])


def measure(layers: int, rows: int, threads: int, rounds: int, layer_shapes) -> dict[str, dict[str, float]]:
    """{kind: {"ms", "gb_s", "rel"}} for both chains, rounds interleaved."""
    import onnxruntime as ort

    from mxport.ops import native

    sessions = {}
    for kind in ("fp32", "bf16"):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        if kind == "bf16" and not native.register_kernels(so):
            raise SystemExit("mxport's native kernels are not built: LinearBF16 would run its function body")
        model = chain(kind, layers, rows, layer_shapes)
        sessions[kind] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, layer_shapes[0][0])).astype(np.float32)
    outs = {kind: s.run(None, {"x": x})[0] for kind, s in sessions.items()}
    times: dict[str, list[float]] = {kind: [] for kind in sessions}
    for _ in range(rounds):
        for kind, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"x": x})
            times[kind].append(time.perf_counter() - t)
    weights = layers * sum(k * n for k, n, _ in layer_shapes)
    scale = float(np.abs(outs["fp32"]).max()) or 1.0
    return {kind: {"ms": float(np.median(t)) * 1e3,
                   "gb_s": weights * (4 if kind == "fp32" else 2) / float(np.median(t)) / 1e9,
                   "rel": float(np.abs(outs[kind] - outs["fp32"]).max()) / scale} for kind, t in times.items()}


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
    args = p.parse_args(argv)
    result = measure(args.layers, args.rows, args.threads, args.rounds, shapes(args.hidden, args.q, args.kv, args.inter))
    for kind, r in result.items():
        label = "ORT MatMul, float32 [K, N]" if kind == "fp32" else "mxport LinearBF16, bf16 [N, K]"
        print(f"{label:32s} rows {args.rows}: {r['ms']:8.2f} ms  {r['gb_s']:5.1f} GB/s of weights  rel {r['rel']:.1e}")
    print(f"LinearBF16 / MatMul speed: {result['fp32']['ms'] / result['bf16']['ms']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
