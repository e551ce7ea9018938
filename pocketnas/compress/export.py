"""ONNX export with the facts a runtime user needs written into the model's metadata."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Dict, Optional

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # ONNX Runtime >= 1.12 runs it; the legacy exporter needs no onnxscript


def model_metadata(model: nn.Module, input_norm: Optional[str] = None) -> Dict[str, str]:
    from .. import __version__

    cfg = getattr(model, "pocketnas_cfg", None)
    norm = input_norm or getattr(model, "input_norm", None) or (cfg.input_norm if cfg else "arcface")
    size = int(getattr(model, "input_size", 112))
    return {
        "input_norm": norm,
        "input_norm_formula": "(x/255 - 0.5)/0.5 on RGB" if norm == "arcface" else "RGB 0..255 as is",
        "input_layout": f"N x 3 x {size} x {size}, RGB, float32",
        "output": f"N x {getattr(model, 'embedding_size', '?')} embedding, not normalised",
        "arch": str(getattr(model, "pocketnas_arch", type(model).__name__)),
        "pocketnas_version": __version__,
    }


def export_onnx(model: nn.Module, path: str, opset: int = DEFAULT_OPSET, input_norm: Optional[str] = None,
                metadata: Optional[Dict[str, str]] = None) -> str:
    """Export ``model`` (eval mode, dynamic batch) to ``path`` with its input normalisation in the metadata."""
    import onnx

    was_training = model.training
    model.eval()
    size = int(getattr(model, "input_size", 112))
    param = next(model.parameters())
    dummy = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the input-size check
            torch.onnx.export(model, (dummy,), tmp, dynamo=False, opset_version=opset, input_names=["data"],
                              output_names=["embedding"],
                              dynamic_axes={"data": {0: "batch"}, "embedding": {0: "batch"}})
        proto = onnx.load(tmp)
        for key, value in {**model_metadata(model, input_norm), **(metadata or {})}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
