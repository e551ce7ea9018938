"""Compression and deployment: pruning (the registered methods of :data:`pocketnas.compress.prune.PRUNERS`), ONNX
export, int8."""
