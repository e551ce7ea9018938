"""ONNX export with the facts a runtime user needs written into the model's metadata."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..outputs import staged_file
from ..image_size import input_hw

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # ONNX Runtime >= 1.12 runs it; the legacy exporter needs no onnxscript


class PReLUAsMax(nn.Module):
    """PReLU written as ``max(x, a * x)``: the same function whenever every slope lies in [0, 1].

    ONNX Runtime's ``PRelu`` kernel broadcasts a per-channel slope element by element; on PocketNetS-128 its
    101 PReLUs took 13 of 19 ms at batch 1 (profiled here), while ``Mul`` + ``Max`` do the same in a tenth of the
    time. The ``elementwise`` export form (see :func:`runtime_friendly`)."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.register_buffer("slope", prelu.weight.detach().clone())

    def _slope(self, x: torch.Tensor) -> torch.Tensor:
        return self.slope.reshape(-1, *([1] * (x.dim() - 2))) if x.dim() > 2 else self.slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, x * self._slope(x))


class PReLUSplit(PReLUAsMax):
    """PReLU for any slope: ``relu(x) + a * min(x, 0)`` (four cheap elementwise operations in ONNX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + self._slope(x) * torch.clamp(x, max=0.0)


class PReLUAsDepthwise(PReLUAsMax):
    """PReLU on feature maps as 1x1 depthwise convolutions: ``conv_a(x) + relu(conv_(1-a)(x))`` when every slope
    is at most 1 (then relu((1 - a) x) = (1 - a) relu(x), bit for bit), else ``conv_a(x) + conv_(1-a)(relu(x))``;
    both equal a x + (1 - a) relu(x). On vectors (after a linear layer) the elementwise ``a x + (1 - a) relu(x)``.

    ONNX Runtime's CPU graph optimiser (level ALL) runs convolutions in its blocked NCHWc layout but elementwise
    ``Mul``/``Max`` with a per-channel operand in plain NCHW, so every elementwise PReLU between two convolutions
    costs a reorder out of and back into the blocked layout: 4.5 of PocketNetS-128's 14 ms at batch 1 on one thread
    (profiled here with the shipped weights, where 65 of 152 PReLUs have negative slopes and none a slope above 1).
    As convolutions the graph stays blocked from the stem to the embedding, and the optimiser fuses the ReLU and the
    ``Add`` into them: 0.61x the elementwise form's latency (``bench/infer.py``). The ``depthwise`` export form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            slope = self._slope(x)
            return x * slope + torch.relu(x) * (1 - slope)
        weight = self.slope.reshape(-1, 1, 1, 1)
        groups = weight.shape[0]
        linear = torch.nn.functional.conv2d(x, weight, groups=groups)
        if bool((self.slope <= 1).all()):
            return linear + torch.relu(torch.nn.functional.conv2d(x, 1 - weight, groups=groups))
        return linear + torch.nn.functional.conv2d(torch.relu(x), 1 - weight, groups=groups)


PRELU_FORMS = ("depthwise", "elementwise", "onnx")


def runtime_friendly(model: nn.Module, form: str = "depthwise") -> nn.Module:
    """A copy of ``model`` for export with every ``nn.PReLU`` replaced by an equal formulation that ONNX Runtime
    runs fast: ``depthwise`` (:class:`PReLUAsDepthwise`, the default) or ``elementwise`` (:class:`PReLUAsMax`
    when the slopes lie in [0, 1], else :class:`PReLUSplit`: what pocketnas exported before); ``onnx`` keeps
    ``nn.PReLU`` (ONNX ``PRelu``). ``model`` itself is left untouched; the export's parity check compares the file
    with the original model."""
    import copy

    if form not in PRELU_FORMS:
        raise ValueError(f"PReLU export form {form!r}: one of {', '.join(PRELU_FORMS)}")
    targets = [name for name, m in model.named_modules() if isinstance(m, nn.PReLU)]
    if not targets or form == "onnx":
        return model
    out = copy.deepcopy(model)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        prelu = getattr(parent, child)
        w = prelu.weight.detach()
        if form == "depthwise":
            kind = PReLUAsDepthwise
        else:
            kind = PReLUAsMax if bool(((w >= 0) & (w <= 1)).all()) else PReLUSplit
        setattr(parent, child, kind(prelu))
    return out


def model_metadata(model: nn.Module, input_norm: Optional[str] = None) -> Dict[str, str]:
    from ..version import __version__

    cfg = getattr(model, "pocketnas_cfg", None)
    norm = input_norm or getattr(model, "input_norm", None) or (cfg.input_norm if cfg else "arcface")
    h, w = input_hw(model)
    return {
        "input_norm": norm,
        "input_norm_formula": "(x/255 - 0.5)/0.5 on RGB" if norm == "arcface" else "RGB 0..255 as is",
        "input_layout": f"N x 3 x {h} x {w}, RGB, float32",
        "output": f"N x {getattr(model, 'embedding_size', '?')} embedding, not normalised",
        "arch": str(getattr(model, "pocketnas_arch", type(model).__name__)),
        "pocketnas_version": __version__,
    }


def export_onnx(model: nn.Module, path: str, opset: int = DEFAULT_OPSET, input_norm: Optional[str] = None,
                metadata: Optional[Dict[str, str]] = None, prelu: str = "depthwise") -> str:
    """Export ``model`` (eval mode, dynamic batch) to ``path`` with its input normalisation in the metadata;
    PReLUs are written in the ``prelu`` form (:func:`runtime_friendly`: by default as equal operations ONNX
    Runtime runs faster than its ``PRelu``)."""
    import onnx

    was_training = model.training
    model.eval()
    graph_model = runtime_friendly(model, prelu)
    param = next(model.parameters())
    dummy = torch.zeros(1, 3, *input_hw(model), device=param.device, dtype=param.dtype)
    try:
        with staged_file(path) as tmp, warnings.catch_warnings():  # the one atomic writer (pocketnas.outputs)
            warnings.simplefilter("ignore")  # tracer warnings about the input-size check
            torch.onnx.export(graph_model, (dummy,), tmp, dynamo=False, opset_version=opset, input_names=["data"],
                              output_names=["embedding"],
                              dynamic_axes={"data": {0: "batch"}, "embedding": {0: "batch"}})
            proto = onnx.load(tmp)
            for key, value in {**model_metadata(model, input_norm), **(metadata or {})}.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, str(value)
            onnx.save(proto, tmp)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
