"""--dtype float16 | bfloat16: half I/O and math, RoPE positions and the mask bias kept float32 until a Cast.

float16 runs on ORT's CPU provider (checked against the NumPy reference); bfloat16 is CUDA-only in ORT 1.32
(no CPU bfloat16 MatMul), so it is checked against ORT's schemas only, with the rest of the CUDA graph (test_cuda.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from mxport.errors import MxportError
from mxport.exporter.families.gpt_oss import graph as gpt_oss
from mxport.exporter import lower as lowering
from mxport.exporter.checkpoint import open_checkpoint
from mxport.runtime.judge.compare import compare
from mxport.contract.io import make_feeds
from mxport.runtime.execution.runners import ReferenceModelRunner

def _lowered(ckpt, **options) -> onnx.ModelProto:
    with open_checkpoint(ckpt) as c:
        b, inputs, outputs = gpt_oss.build(c)
        return ir.serde.serialize_model(lowering.lower(b.model(inputs, outputs), **options))


@pytest.fixture(scope="module")
def tiny(tiny_config, make_checkpoint):
    return tiny_config, make_checkpoint(tiny_config)


def test_cpu_float16_runs_and_stays_close(tiny, tmp_path):
    cfg, ckpt = tiny
    proto = _lowered(ckpt, target="cpu", experts="float32", dtype="float16")
    onnx.save(proto, tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 12))
    mask = np.ones((2, 12), np.int64)
    mask[1, :4] = 0
    feeds = make_feeds(ids, mask, cfg=cfg)
    half_feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, half_feeds)))
    assert got["logits"].dtype == np.float16 and got["present.0.key"].dtype == np.float16
    ref = ReferenceModelRunner(ckpt)
    want = ref.infer(feeds)["logits"]
    ref.close()
    report = compare({"logits": got["logits"].astype(np.float32)}, {"logits": want}, masks={"logits": mask.astype(bool)})
    stats = report["logits"]
    assert stats.rel < 1e-2 and stats.top1 == 1.0, stats  # measured 1.7e-3 when written


def test_bad_dtype_combinations():
    empty = ir.Model(ir.Graph([], [], nodes=[]), ir_version=10)
    with pytest.raises(MxportError, match=r"--dtype bfloat16 .*no bfloat16 MatMul.* needs --target cuda"):
        lowering.lower(empty, target="cpu", experts="float32", dtype="bfloat16")
    with pytest.raises(MxportError, match="--dtype float16 .* needs --target cpu or cuda; --target portable takes --dtype float32"):
        lowering.lower(empty, target="portable", dtype="float16")
