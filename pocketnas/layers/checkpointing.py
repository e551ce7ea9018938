"""Activation (gradient) checkpointing that leaves BatchNorm's running statistics as an ordinary step leaves them.

Chen, Xu, Zhang, Guestrin, "Training Deep Nets with Sublinear Memory Cost", arXiv 1604.06174 (2016): keep only
each block's input during the forward pass and recompute the block's activations in the backward pass. A
PocketNetS-128 training step keeps about 108 MB of activations per 112x112 image (a cell at 56x56 keeps 13 times
its input); checkpointing each cell keeps its input alone, for one more forward pass of compute (docs/performance.md).

torch's checkpoint runs the block's forward twice, so a BatchNorm in training mode would fold the batch's
statistics into its running mean and variance twice. :func:`checkpoint_block` restores those buffers after the
recomputation: the gradients are the ordinary ones (the recomputation sees the same batch, in train mode) and the
running statistics are updated once, as without checkpointing. Dropout's random state is replayed by torch.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def _running_stat_buffers(module: nn.Module) -> List[torch.Tensor]:
    return [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


@contextlib.contextmanager
def _statistics_untouched(module: nn.Module) -> Iterator[None]:
    """The recomputation's context: every running-statistics buffer of ``module`` as it was before."""
    buffers = _running_stat_buffers(module)
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


def checkpoint_block(block: nn.Module, *inputs: torch.Tensor) -> Any:
    """``block(*inputs)`` with its activations recomputed in the backward pass instead of kept (non-reentrant
    torch checkpoint); BatchNorm running statistics updated once. Outside autograd (``no_grad``, inference) it is
    a plain call."""
    if not torch.is_grad_enabled():
        return block(*inputs)

    def contexts() -> Tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _statistics_untouched(block)

    return checkpoint(block, *inputs, use_reentrant=False, context_fn=contexts)


class GradCheckpointing:
    """Mixin of the networks that can checkpoint their blocks (timm's ``set_grad_checkpointing``)."""

    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, one more forward of compute)."""
        self.grad_checkpointing = bool(enable)

    def run_block(self, block: nn.Module, *inputs: torch.Tensor) -> Any:
        """``block(*inputs)``, checkpointed when the network is set to and autograd is recording."""
        return checkpoint_block(block, *inputs) if self.grad_checkpointing else block(*inputs)
