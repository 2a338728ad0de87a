"""NumPy wiring of each model family for the reference model (runtime/oracle/model.py).

A module here provides, over a ReferenceModel `m` (weights via m.w(name) in the compute dtype, m.raw(name) as
stored, m.rows(name, ids), m.cfg, m.dtype):

    positions(m, position_ids [B,S]) -> tables passed to every layer (RoPE cos, sin), or None
    embed(m, ids [B,S], position_ids [B,S]) -> x [B,S,H]
    layer(m, i, x, tables, keep [B,S,T] bool, past (k, v) or None) -> (x, (k, v) [B,Hkv,T,D])
    final_norm(m, x) -> x

The math lives once in runtime/oracle/layers.py; it never calls the ops' kernels (it is the oracle).
"""

import importlib
from types import ModuleType


def wiring(family) -> ModuleType:
    """The NumPy wiring of `family`: the module of this package named as the family (the rule that replaces a
    module path in the Family record, so the exporter never names the runtime)."""
    return importlib.import_module(f"{__name__}.{family.name}")
