"""What a network is made of, counted: parameters, FLOPs, bytes on disk (used by the search budget and by
:mod:`pocketnas.evaluation.cost`).

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and linear layers as
2 x multiply-adds) with rules added for the layers it leaves out, so that pooling and identity layers are counted
correctly instead of breaking the counter (as the original release's counter did):

* BatchNorm: 2 per output element (scale and shift);
* activations (PReLU, ReLU): 1 per output element;
* 3x3 max/avg pooling: k*k per output element;
* identities, concatenations, reshapes and the element-wise sums that join a cell's edges: 0.

This is the convention under which PocketNet's published costs (Boutros et al., IEEE Access 2022, Table: 587.11
MFLOPs for PocketNetS-128, 1099.02 for PocketNetM-128) are reproduced exactly at 1 x 3 x 112 x 112.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..image_size import HW, Size, as_hw, input_hw

aten = torch.ops.aten


def _numel(shape: Any) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def _first_shape(out_shape: Any) -> Any:
    return out_shape[0] if isinstance(out_shape, (tuple, list)) and out_shape and \
        isinstance(out_shape[0], (tuple, list, torch.Size)) else out_shape


def _per_output(factor: int):
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return factor * _numel(_first_shape(out_shape))

    return formula


def _pool(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size")
    kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
    if len(kernel) == 1:
        kernel = kernel * 2
    return int(math.prod(kernel)) * _numel(_first_shape(out_shape))


def _extra_rules() -> Dict[Any, Any]:
    rules: Dict[Any, Any] = {}
    for name in ("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training"):
        if hasattr(aten, name):
            rules[getattr(aten, name)] = _per_output(2)
    for name in ("_prelu_kernel", "relu", "relu_", "hardtanh", "sigmoid", "silu"):
        if hasattr(aten, name):
            rules[getattr(aten, name)] = _per_output(1)
    for name in ("max_pool2d_with_indices", "max_pool2d", "avg_pool2d"):
        rules[getattr(aten, name)] = _pool
    return rules


@dataclass
class FlopCount:
    total: int
    by_op: Dict[str, int] = field(default_factory=dict)

    @property
    def mflops(self) -> float:
        return self.total / 1e6


def model_input_size(model: nn.Module) -> HW:
    """The (height, width) ``model`` takes."""
    return input_hw(model)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: Optional[Size] = None, batch: int = 1) -> FlopCount:
    """FLOPs of one forward pass at ``batch x 3 x H x W`` in eval mode (see the module docstring for the rules)."""
    size = as_hw(input_size) if input_size else model_input_size(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_extra_rules()) as counter:
            model(torch.zeros(batch, 3, *size, device=device))
    finally:
        model.train(was_training)
    by_op = {str(k).replace("aten.", ""): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(int(counter.get_total_flops()), by_op)


def fp32_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict saved with floating tensors as float32 (what a .pth on disk takes)."""
    state = {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()
