"""Compression and deployment: pruning, ONNX export, int8."""

# the five unstructured pruning methods (see :mod:`pocketnas.compress.prune`); here, free of torch, for the CLI
METHODS = ("global_weight", "layer_weight", "global_grad", "layer_grad", "random")
