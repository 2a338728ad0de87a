"""Execution: step models over ONNX Runtime / onnx.reference (session.py) and the runners verify drives (runners.py)."""
