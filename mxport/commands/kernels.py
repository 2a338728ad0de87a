"""`mxport kernels`: where mxport's native ONNX Runtime kernel library is and what it provides, or install it.

    mxport kernels                  path, domain and ops, ISA in use, ORT API version (exit 1 when it was not built)
    mxport kernels --json           the same as JSON (ops/native.py's info())
    mxport kernels --into EXPORT    copy it into an export folder, named in its genai_config.json (install_into)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mxport.contract.folder import GENAI_FILE
from mxport.ops.native import info, install_into


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the library description as JSON")
    parser.add_argument("--into", metavar="EXPORT", help="copy the library into an export folder and name it in its "
                        "genai_config.json, so onnxruntime-genai runs ai.mxport nodes natively (this platform only)")


def run(args: argparse.Namespace) -> int:
    if args.into:
        target = install_into(args.into)
        print(f"{target} (named in {Path(args.into) / GENAI_FILE}: custom_ops_library)")
        return 0
    data = info()
    if args.json:
        print(json.dumps(data))
    elif data["path"] is None:
        print("native kernels: not built (no compiler at install time?); ai.mxport ops run through their ONNX "
              "function bodies")
    else:
        print(data["path"])
        print(f"domain {data['domain']} version 1, CPUExecutionProvider: {', '.join(data['ops'])}")
        print(f"isa {data['isa']} (this CPU's best: {data['best']}; MXPORT_KERNELS_ISA=avx512|avx2|c caps it), "
              f"ONNX Runtime C API version {data['ort_api']} or newer")
        print(f"register in other hosts: SessionOptions.register_custom_ops_library({str(data['path'])!r})")
    return 0 if data["path"] else 1
