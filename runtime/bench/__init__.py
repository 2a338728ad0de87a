"""Benchmarks: mxport's own speed, memory and size (speed.py) and peers beside it (engines.py)."""
