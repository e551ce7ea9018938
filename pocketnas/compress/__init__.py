"""Compression and deployment: pruning, ONNX export, int8."""
