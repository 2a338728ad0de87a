"""NumPy wiring of each model family for the reference model (runtime/reference_model.py).

A module here provides, over a ReferenceModel `m` (weights via m.w(name) in the compute dtype, m.raw(name) as
stored, m.rows(name, ids), m.cfg, m.dtype):

    positions(m, position_ids [B,S]) -> tables passed to every layer (RoPE cos, sin), or None
    embed(m, ids [B,S], position_ids [B,S]) -> x [B,S,H]
    layer(m, i, x, tables, keep [B,S,T] bool, past (k, v) or None) -> (x, (k, v) [B,Hkv,T,D])
    final_norm(m, x) -> x

The math lives once in runtime/reference_layers.py; it never calls the ops' kernels (it is the oracle).
"""
