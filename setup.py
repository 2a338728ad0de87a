"""Build step for mxport's native ONNX Runtime kernels (ops/csrc -> mxport/ops/libmxport_kernels*.so).

Everything else is in pyproject.toml. The library is an ordinary C shared object that ONNX Runtime loads with
RegisterCustomOps (it is not a Python extension module; setuptools only drives the system compiler). Building it
may fail (no compiler, not x86/Linux): mxport then installs without it, prints one line saying so, and runs the
ai.mxport ops through their ONNX function bodies (`mxport kernels` tells which case a machine is in).
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The repository keeps its parts as top-level folders; they install under one import package, `mxport`.
ROOTS = {"mxport": "mxport", "mxport.exporter": "exporter", "mxport.runtime": "runtime", "mxport.ops": "ops"}


def packages() -> tuple[dict[str, str], list[str]]:
    """Every folder with an __init__.py under the roots, as (package_dir, packages)."""
    here = Path(__file__).resolve().parent
    found: dict[str, str] = {}
    for name, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder)
            found[".".join([name, *rel.parts])] = "/".join([folder, *rel.parts])
    return found, list(found)


NATIVE = Extension(
    "mxport.ops.libmxport_kernels",
    sources=["ops/csrc/mxport_kernels.c", "ops/csrc/ort_kernel.c", "ops/csrc/linear_q4_op.c", "ops/csrc/mx_math.c",
             "ops/csrc/mx_q4.c", "ops/csrc/mx_avx512.c", "ops/csrc/mx_mxfp4_int.c", "ops/csrc/mx_swiglu.c",
             "ops/csrc/gqa_op.c", "ops/csrc/mx_attention.c"],
    depends=["ops/csrc/mx_math.h", "ops/csrc/mx_internal.h", "ops/csrc/mx_avx512.h", "ops/csrc/ort_abi.h",
             "ops/csrc/ort_kernel.h", "ops/csrc/mx_attention.h"],
    extra_compile_args=["-O3", "-std=gnu11", "-fvisibility=hidden", "-Wall"],
    libraries=["m"],
)


class OptionalNative(build_ext):
    """build_ext that reports a failed native build in one line instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler/toolchain problem: install without the kernels
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    _said = False

    def _skip(self, exc: Exception) -> None:
        if OptionalNative._said:  # editable installs fail a second time copying the missing library: say it once
            return
        OptionalNative._said = True
        print(f"mxport: native kernels not built ({type(exc).__name__}: {exc}); mxport works without them "
              "(ai.mxport ops then run through their ONNX function bodies)")


PACKAGE_DIR, PACKAGES = packages()
setup(package_dir=PACKAGE_DIR, packages=PACKAGES, ext_modules=[NATIVE], cmdclass={"build_ext": OptionalNative})
