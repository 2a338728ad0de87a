"""mxport's native ONNX Runtime kernels (ops/csrc): where the library is, what it provides, registering it.

    library_path()          Path of libmxport_kernels*.so next to this module, or None when it was not built
    register_kernels(so)    SessionOptions.register_custom_ops_library(path); says once when the library is missing
    info()                  {"path", "domain", "ops", "isa", "best", "ort_api"} read from the library itself
    install_into(folder)    copy it into an export folder, named in genai_config.json (onnxruntime-genai)

The library is a standard ORT custom-op library (RegisterCustomOps): ai.mxport MoEMXFP4, MatMulMXFP4, LinearBF16,
LinearQ4 and GroupQueryAttention (and MoEMXFP4_2) on the CPU provider. ORT runs a registered kernel in preference to the model-local function of the same name, so
one exported file runs everywhere through the function bodies and fast where the library is registered (tested
with ORT's profiler: tests/ops/test_native.py). Other hosts register it by path (`mxport kernels` prints it,
mxport/commands/kernels.py):
Python `so.register_custom_ops_library(path)`, C `RegisterCustomOpsLibrary`, C# / Java the same-named methods.

MXPORT_KERNELS=off keeps mxport's own sessions on the function bodies (comparisons). The library has three paths
of each kernel, chosen when it is registered: AVX-512 (F, BW, VL, VNNI, VBMI), AVX2+FMA and plain C, the best the
CPU runs; MXPORT_KERNELS_ISA=avx512|avx2|c caps it (tests run every path; another value fails the registration).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

LIBRARY_GLOB = "libmxport_kernels*.so"
ENV_SWITCH = "MXPORT_KERNELS"  # "off" | "0": do not register in mxport's sessions
REGISTERED_KEY = "mxport.native_kernels"  # session config entry marking options that already carry the library
_warned = False
_log = logging.getLogger(__name__)  # no handler configured: logging's last resort prints the message to stderr


def library_path() -> Path | None:
    """The built library next to this module (editable and normal installs alike), or None."""
    found = sorted(Path(__file__).resolve().parent.glob(LIBRARY_GLOB))
    return found[0] if found else None


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def _say_missing_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        _log.warning("mxport: native kernels are missing (ops/csrc was not built at install time); ai.mxport ops run "
                     "through their ONNX function bodies (slow). Reinstall with a C compiler to build them.")


def register_kernels(session_options: Any) -> bool:
    """Register the library on ORT SessionOptions (once per options object). True if the kernels are on."""
    if not enabled():
        return False
    path = library_path()
    if path is None:
        _say_missing_once()
        return False
    try:
        session_options.get_session_config_entry(REGISTERED_KEY)
        return True  # these options already carry it
    except Exception:  # noqa: BLE001 - ORT raises when the key was never set
        pass
    session_options.register_custom_ops_library(str(path))
    session_options.add_session_config_entry(REGISTERED_KEY, "1")
    return True


def info() -> dict[str, Any]:
    """What the library says about itself; {"path": None} when it is not built. "isa" is the path a registration
    now uses (MXPORT_KERNELS_ISA's cap applied; "invalid" for a value that names none), "best" the CPU's best."""
    path = library_path()
    if path is None:
        return {"path": None}
    lib = ctypes.CDLL(str(path))
    lib.mxport_kernels_info.restype = ctypes.c_char_p
    fields = dict(part.split("=", 1) for part in lib.mxport_kernels_info().decode().split(";"))
    return {"path": str(path), "domain": fields["domain"], "ops": fields["ops"].split(","), "isa": fields["isa"],
            "best": fields["best"], "ort_api": int(fields["ort_api"])}


GENAI_LIBRARY = "libmxport_kernels.so"  # the library's name inside an export folder (`mxport kernels --into`)


def install_into(folder: str | Path) -> Path:
    """Copy the library into an export folder and name it in the folder's genai_config.json
    (model.decoder.session_options.custom_ops_library), so onnxruntime-genai runs the ai.mxport nodes natively.

    onnxruntime-genai loads a custom-op library only from inside the model folder ("not within an allowed
    directory" otherwise), hence the copy; the path is relative, so the folder can move. The library is built
    for this machine (x86-64 Linux): a folder that goes to another platform is exported again, not installed into."""
    import json
    import shutil

    from mxport.contract.folder import GENAI_FILE
    from mxport.errors import MxportError
    from mxport.files import write_file

    folder = Path(folder)
    config_path = folder / GENAI_FILE
    if not config_path.is_file():
        raise MxportError(f"kernels --into: {folder} has no genai_config.json (expected an mxport export folder)")
    path = library_path()
    if path is None:
        raise MxportError("kernels --into: mxport's native kernels are not built on this machine (no compiler at "
                          "install time?): nothing to install")
    try:
        config = json.loads(config_path.read_text())
        options = config["model"]["decoder"].setdefault("session_options", {})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MxportError(f"kernels --into: {config_path} is not a genai config with model.decoder "
                          f"({type(exc).__name__}: {exc})") from exc
    target = folder / GENAI_LIBRARY
    write_file(target, lambda f: f.write(path.read_bytes()))
    shutil.copymode(path, target)
    options["custom_ops_library"] = GENAI_LIBRARY
    write_file(config_path, lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()))
    return target
