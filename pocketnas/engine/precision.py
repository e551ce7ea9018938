"""The numeric precision of a training or search run: one setting, ``precision: auto | fp32 | bf16 | fp16``.

Mixed precision here is autocast around the network's forward pass only (Micikevicius et al., "Mixed Precision
Training", ICLR 2018): the master weights, their gradients and the optimiser state stay float32, and the margin
logits, the softmax cross-entropy and every distillation loss are computed in float32 from the embedding cast back
to float32 (the margin's cosine and its clamp are where low precision would bite: cos(theta + m) near 1).

``auto`` resolves per device from what was measured (``bench/train.py``, docs/performance.md):

- CUDA: bfloat16 where the GPU supports it, else float16 with loss scaling (as pocketnas always did on CUDA);
- CPU: float32. On the 2-core Zen 4 machines pocketnas is developed on, bfloat16 autocast made a PocketNet
  training step slower in eager mode (the step is bound by memory traffic and depthwise kernels, and autocast adds
  a cast of every weight and of the activations at each convolution) and no faster than float32 once compiled, so
  ``auto`` keeps float32 there; ``bf16`` remains available on the CPU for machines where it pays.

The resolved precision is what a run records (config and checkpoint); a resumed run keeps it.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Optional

import torch

from ..config import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(value: str, source: str = "config") -> None:
    if value not in PRECISIONS:
        raise ConfigError(f"{source}: precision must be one of {', '.join(PRECISIONS)}, got {value!r}")


def resolve_precision(requested: str, device: torch.device, amp: bool = True) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``requested`` on ``device``. ``amp=False`` (the older switch) turns
    ``auto`` into float32 everywhere. float16 is a CUDA precision (loss scaling is a CUDA GradScaler's job)."""
    check_precision(requested)
    if requested == "auto":
        if device.type == "cuda" and amp:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision fp16 needs a CUDA device (this run is on {device}); use bf16 or fp32")
    return requested


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The autocast context of the network's forward pass at ``precision`` (a no-op for float32)."""
    dtype: Optional[torch.dtype] = DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def float32_region(device: torch.device) -> ContextManager:
    """Where autocast must not reach: margin logits, losses."""
    return torch.autocast(device.type, enabled=False)


def needs_loss_scaling(precision: str) -> bool:
    return precision == "fp16"
