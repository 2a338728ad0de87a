"""Decode attention speed without a model around it: a chain of GroupQueryAttention nodes, one per layer, each on its
own float32 KV cache, run by onnxruntime's com.microsoft kernel and by mxport's ai.mxport kernel on the same inputs.

    python examples/attention_chain.py [--layers 28] [--context 160] [--capacity 192] [--threads 2] [--rounds 50]
                                       [--heads 16 --kv-heads 8 --head-dim 128]

Each node is one decode token (S = 1) of a qwen3-0.6b layer: rotary folded in, a padding bias [1, 1, 1, T], past and
present bound to one buffer of `--capacity` slots (the static cache mxport's sessions and onnxruntime-genai use).
A step reads layers x context x kv-heads x head-dim x 8 bytes of cache (28 x 160 x 8 x 128 x 8 = 36.7 MB at the
defaults): under the ~48 MB of last-level cache this VM gets, so the defaults time a warm cache; `--context 1000
--capacity 1024` (229 MB) times the cache's trip from memory, as in a model, where the weights stream through the
caches between two steps. Reports the median and best time per node and the cache bytes read per second, and the
largest difference between the two kernels' outputs. The numbers in docs/BENCHMARKS.md ("GroupQueryAttention of
mxport's own") come from this script.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def chain(kind: str, layers: int, context: int, capacity: int, heads: int, kv_heads: int, head_dim: int):
    """A model of `layers` GroupQueryAttention nodes, each query the previous output; `kind` "ort" or "mxport"."""
    from onnx import TensorProto, helper

    from mxport import ops

    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in [
        ("seqlens_k", TensorProto.INT32, [1]), ("total", TensorProto.INT32, []), ("cos", f, [context, head_dim // 2]),
        ("sin", f, [context, head_dim // 2]), ("pos", TensorProto.INT64, [1, 1]), ("bias", f, [1, 1, 1, context]),
        ("query_seqlens", TensorProto.INT32, [1]), ("q0", f, [1, 1, heads * head_dim]),
        ("k", f, [1, 1, kv_heads * head_dim]), ("v", f, [1, 1, kv_heads * head_dim])]]
    nodes, outputs, x = [], [], "q0"
    shared = ["seqlens_k", "total", "cos", "sin", "pos", "bias"]
    for i in range(layers):
        inputs += [helper.make_tensor_value_info(f"past_{kv}{i}", f, [1, kv_heads, capacity, head_dim]) for kv in "kv"]
        ins = [x, "k", "v", f"past_k{i}", f"past_v{i}", *shared]
        ins += ["", "", "", "", "", "query_seqlens"] if kind == "ort" else ["", "query_seqlens"]
        attrs = dict(num_heads=heads, kv_num_heads=kv_heads, local_window_size=-1, do_rotary=1, scale=0.0)
        node = (helper.make_node("GroupQueryAttention", ins, [f"q{i + 1}", f"k{i}", f"v{i}"], domain="com.microsoft",
                                 **attrs) if kind == "ort" else
                ops.make_node("GroupQueryAttention", ins, [f"q{i + 1}", f"k{i}", f"v{i}"], **attrs))
        nodes.append(node)
        outputs += [helper.make_tensor_value_info(f"k{i}", f, None), helper.make_tensor_value_info(f"v{i}", f, None)]
        x = f"q{i + 1}"
    graph = helper.make_graph(nodes, f"attention_{kind}", inputs, [helper.make_tensor_value_info(x, f, None), *outputs])
    model = ops.make_model(graph)
    if all(i.domain != "com.microsoft" for i in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, x


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from mxport.ops import native

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--context", type=int, default=160)
    p.add_argument("--capacity", type=int, default=192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    args = p.parse_args(argv)
    if args.capacity < args.context:
        p.error("--capacity must be at least --context")
    rng = np.random.default_rng(0)
    feeds = {"seqlens_k": np.array([args.context - 1], np.int32), "total": np.array(args.context, np.int32),
             "cos": np.ones((args.context, args.head_dim // 2), np.float32),
             "sin": np.zeros((args.context, args.head_dim // 2), np.float32),
             "pos": np.array([[args.context - 1]], np.int64), "bias": np.zeros((1, 1, 1, args.context), np.float32),
             "query_seqlens": np.array([1], np.int32),
             "q0": rng.standard_normal((1, 1, args.heads * args.head_dim)).astype(np.float32),
             "k": rng.standard_normal((1, 1, args.kv_heads * args.head_dim)).astype(np.float32),
             "v": rng.standard_normal((1, 1, args.kv_heads * args.head_dim)).astype(np.float32)}
    caches = [rng.standard_normal((1, args.kv_heads, args.capacity, args.head_dim)).astype(np.float32)
              for _ in range(2 * args.layers)]
    read = args.layers * args.context * args.kv_heads * args.head_dim * 8
    print(f"{args.layers} layers, context {args.context} of {args.capacity} slots, {args.threads} threads: "
          f"{read / 1e6:.1f} MB of cache read per step")
    results = {}
    for kind, label in (("ort", "onnxruntime com.microsoft.GroupQueryAttention"),
                        ("mxport", "mxport ai.mxport.GroupQueryAttention (native)")):
        model, last = chain(kind, args.layers, args.context, args.capacity, args.heads, args.kv_heads, args.head_dim)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        if kind == "mxport" and not native.register_kernels(so):
            raise SystemExit("attention_chain.py: mxport's native kernels are not built")
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        binding = session.io_binding()
        binding.bind_output(last, "cpu")  # first: get_outputs() lists outputs in binding order
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        values = [ort.OrtValue.ortvalue_from_numpy(c.copy()) for c in caches]
        for i in range(args.layers):
            for j, (past, present) in enumerate(((f"past_k{i}", f"k{i}"), (f"past_v{i}", f"v{i}"))):
                binding.bind_ortvalue_input(past, values[2 * i + j])
                binding.bind_ortvalue_output(present, values[2 * i + j])
        times = []
        for r in range(args.rounds + 3):
            t = time.perf_counter()
            session.run_with_iobinding(binding)
            if r >= 3:
                times.append(time.perf_counter() - t)
        results[kind] = binding.get_outputs()[0].numpy().copy()
        med, best = float(np.median(times)), min(times)
        print(f"{label:48s} {med / args.layers * 1e6:8.1f} us/node median, {best / args.layers * 1e6:8.1f} best, "
              f"{read / best / 1e9:6.1f} GB/s")
    diff = np.abs(results["mxport"] - results["ort"]).max() / np.abs(results["ort"]).max()
    print(f"largest difference, relative to the largest output: {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
