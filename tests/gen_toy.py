"""A toy causal LM as an exported folder, for generation tests that must not wait for the real exporter.

It follows the model I/O contract of ARCHITECTURE.md exactly (input_ids, attention_mask with left padding,
position_ids, past_key_values.{i}.key/value -> logits, present.{i}.key/value; absolute cache slots; masked slots
excluded) with standard ONNX ops only, so ONNX Runtime and onnx.reference both run it:

    x = E[ids] + Pos[position_ids]                                   # [B,S,H]
    per layer: k,v = x Wk, x Wv -> [B,KV,S,D]; present = concat(past, new) on axis 2
               scores = q kᵀ / √D; allowed(s, j) = j <= P+s and mask[b, j] == 1; softmax; x += (p v) Wo
    logits = x Wlm                                                   # [B,S,V]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mxport.exporter.families.gpt_oss.config import GptOssConfig
from mxport.runtime.generation.tokenizer import build_harmony_tokenizer

H, KV, D, LAYERS = 16, 2, 8, 2


def toy_config(vocab: int, max_positions: int, eos: tuple[int, ...]) -> GptOssConfig:
    return GptOssConfig(vocab_size=vocab, hidden_size=H, intermediate_size=H, num_hidden_layers=LAYERS,
                       num_attention_heads=KV, num_key_value_heads=KV, head_dim=D, num_experts=1,
                       experts_per_token=1, experts_mxfp4=False, eos_token_ids=eos, pad_token_id=None,
                       max_position_embeddings=max_positions)


def build_toy_model(vocab: int, max_positions: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, *shape, std=1.0):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, ins, outs, **attrs):
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    w("E", vocab, H, std=1.0)
    w("Pos", max_positions, H, std=0.5)
    w("Wlm", H, vocab, std=0.25)
    const("shape_bshd", np.array([0, 0, KV, D], np.int64))
    const("shape_bsh", np.array([0, 0, KV * D], np.int64))
    const("neg", np.array(-1e9, np.float32))
    const("scale", np.array(1 / np.sqrt(D), np.float32))
    const("zero", np.array(0, np.int64))
    const("one", np.array(1, np.int64))
    const("ax0", np.array([0], np.int64))
    const("ax1", np.array([1], np.int64))
    const("ax12", np.array([1, 2], np.int64))
    x = node("Add", [node("Gather", ["E", "input_ids"], ["emb"]), node("Gather", ["Pos", "position_ids"], ["pemb"])],
             ["x0"])
    # mask pieces shared by all layers: T = P + S from the attention mask
    node("Squeeze", [node("Slice", [node("Shape", ["attention_mask"], ["mshape"]), "ax1",
                                             const("two", np.array([2], np.int64)), "ax0"], ["t1"])], ["T"])
    node("Squeeze", [node("Slice", [node("Shape", ["input_ids"], ["ishape"]), "ax1",
                                             const("two_b", np.array([2], np.int64)), "ax0"], ["s1"])], ["S"])
    node("Sub", ["T", "S"], ["P"])  # T, S, P as scalars
    key_idx = node("Range", ["zero", "T", "one"], ["key_idx"])  # [T]
    q_slot = node("Unsqueeze", [node("Range", ["P", "T", "one"], ["q_slot0"]), "ax1"],
                  ["q_slot"])  # [S,1]
    causal = node("LessOrEqual", [key_idx, q_slot], ["causal"])  # [S,T]
    keep = node("Unsqueeze", [node("Equal", ["attention_mask", "one"], ["keep0"]), "ax12"], ["keep"])  # [B,1,1,T]
    allowed = node("And", [causal, keep], ["allowed"])  # [B,1,S,T]
    for i in range(LAYERS):
        def heads(src, tag):
            y = node("MatMul", [x, w(f"W{tag}{i}", H, KV * D, std=0.5)], [f"{tag}{i}_flat"])
            y = node("Reshape", [y, "shape_bshd"], [f"{tag}{i}_bshd"])
            return node("Transpose", [y], [f"{tag}{i}_new"], perm=[0, 2, 1, 3])  # [B,KV,S,D]
        q = heads(x, "q")
        k = node("Concat", [f"past_key_values.{i}.key", heads(x, "k")], [f"present.{i}.key"], axis=2)
        v = node("Concat", [f"past_key_values.{i}.value", heads(x, "v")], [f"present.{i}.value"], axis=2)
        kt = node("Transpose", [k], [f"kt{i}"], perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kt], [f"qk{i}"]), "scale"], [f"scores{i}"])
        scores = node("Where", [allowed, scores, "neg"], [f"masked{i}"])
        probs = node("Softmax", [scores], [f"probs{i}"], axis=-1)
        out = node("Transpose", [node("MatMul", [probs, v], [f"pv{i}"])], [f"pvt{i}"], perm=[0, 2, 1, 3])
        out = node("Reshape", [out, "shape_bsh"], [f"attn{i}"])
        x = node("Add", [x, node("MatMul", [out, w(f"Wo{i}", KV * D, H, std=0.5)], [f"o{i}"])], [f"x{i + 1}"])
    node("MatMul", [x, "Wlm"], ["logits"])

    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["B", "S"]),
              helper.make_tensor_value_info("attention_mask", i64, ["B", "T"]),
              helper.make_tensor_value_info("position_ids", i64, ["B", "S"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["B", "S", vocab])]
    for i in range(LAYERS):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", f32, ["B", KV, "P", D]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", f32, ["B", KV, "T", D]))
    graph = helper.make_graph(nodes, "toy_lm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def write_toy_export(out_dir: Path, vocab: int = 320, max_positions: int = 96, seed: int = 0) -> Path:
    """model.onnx + mxport.json + tokenizer.json (harmony specials inside the vocab)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_harmony_tokenizer(vocab)
    tok.save(out_dir / "tokenizer.json")
    eos = (tok.require("<|return|>"), tok.require("<|endoftext|>"))
    onnx.save(build_toy_model(vocab, max_positions, seed), str(out_dir / "model.onnx"))
    cfg = toy_config(vocab, max_positions, eos)
    meta = {"mxport_version": "test", "config": cfg.to_hf_dict(), "eos_token_ids": list(eos), "target": "toy"}
    (out_dir / "mxport.json").write_text(json.dumps(meta, indent=1))
    return out_dir
