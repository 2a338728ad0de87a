"""mxport: export open-weight MoE LLM checkpoints to ONNX, run them anywhere ONNX Runtime runs, prove the numbers.

The repository keeps three parts as top-level folders, installed as sub-packages of this one:
  mxport.exporter  checkpoint readers, synthetic checkpoints, ONNX graph builders, per-provider lowering
  mxport.runtime   ONNX Runtime sessions, generation and chat; the NumPy reference model and the comparator
  mxport.ops       custom ops (domain ``ai.mxport``): schema, ONNX function body, NumPy kernel, each in one module
"""

__version__ = "0.1.0"

from mxport.errors import MxportError  # noqa: E402  (re-exported: the one error type the CLI turns into exit 2)

__all__ = ["MxportError", "__version__"]
