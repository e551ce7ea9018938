"""BatchNorm statistics from data: a freshly built network in eval mode has unit running statistics, which lets
activations grow to ~1e9 through PocketNet's deep BN stack; recomputing them on a few real batches gives sane
eval-mode outputs without training (useful for demos, export checks and after pruning)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them as the exact average over ``batches``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    try:
        seen = 0
        for x in batches:
            model(x)
            seen += 1
        if not seen:
            raise ValueError("calibrate_batchnorm needs at least one batch")
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return model
