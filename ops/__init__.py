"""mxport.ops: the custom op set `ai.mxport`, version 1 (see docs/ARCHITECTURE.md, "Custom ops").

Op modules are added to ALL_OPS as they land; each holds the op's schema docstring, its ONNX function body
and its NumPy kernel.
"""

from __future__ import annotations

DOMAIN = "ai.mxport"
VERSION = 1
