"""Beta-decay regularisation of the architecture parameters (beta-DARTS: P. Ye, B. Li, Y. Li, T. Chen, J. Fan,
W. Ouyang, "beta-DARTS: Beta-Decay Regularization for Differentiable Architecture Search", CVPR 2022), one published
remedy against DARTS's collapse and instability.

The architecture step minimises ``L_val + lambda_e * L_beta`` with

    L_beta = (1 / |E|) sum_{edges} log sum_{o} exp(alpha_{edge, o})

a smooth maximum of each edge's alphas. Its gradient with respect to an edge's alphas is that edge's softmax
divided by |E|: every step pulls the alphas down in proportion to their weight, which keeps one operation (in
practice the skip connection) from running away with an edge and keeps the alphas' spread (their "beta" after the
softmax) in check. ``lambda_e`` grows linearly over the search, from 0 at the first epoch: ``weight * e / epochs``.
"""
from __future__ import annotations

from typing import Sequence

import torch


def beta_decay_loss(alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """``L_beta``: the mean over every edge (a row of each ``(edges, operations)`` tensor) of its logsumexp."""
    if not alphas:
        raise ValueError("beta_decay_loss needs at least one tensor of alphas")
    return torch.cat([torch.logsumexp(a, dim=-1).reshape(-1) for a in alphas]).mean()


def beta_decay_weight(weight: float, epoch: int, epochs: int) -> float:
    """``lambda_e``: ``weight`` scaled linearly by the search's progress (``epoch`` counts from 0)."""
    return float(weight) * epoch / max(1, epochs)


__all__ = ["beta_decay_loss", "beta_decay_weight"]
