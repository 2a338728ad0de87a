"""The oracle: the NumPy reference model (model.py), its layers (layers.py) and each family's wiring (families/)."""
