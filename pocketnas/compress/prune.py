"""Unstructured pruning at a target compression rate, the five methods of ShrinkBench (Blalock et al., "What is the
State of Neural Network Pruning?", MLSys 2020) as compared for ocular verification on phones by Almadan and Rattani
("Compact CNN Models for On-device Ocular-based User Recognition in Mobile Devices", IEEE SSCI 2021):

  global_weight  the smallest |w| over all prunable layers together
  layer_weight   the smallest |w| of each layer, every layer by the same fraction
  global_grad    the smallest |w * dL/dw| over all prunable layers (gradients of the margin loss on face batches)
  layer_grad     the same score, per layer
  random         uniformly random weights over all prunable layers

Compression rate R = prunable parameters / remaining non-zero prunable parameters, so a fraction 1 - 1/R of the
prunable weights is removed. Prunable: the weights of convolutions and linear layers; BatchNorm (the embedding BN
included), PReLU and biases stay dense. Built on :mod:`torch.nn.utils.prune`: masks are forward pre-hooks, so they
hold through fine-tuning, and :func:`make_permanent` folds them into the weights at the end.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

from ..errors import InputError
from ..registry import Registry

logger = logging.getLogger(__name__)


class Pruner:
    """One pruning method: which weights count as least important (``importance``: a score per weight, or None for
    the magnitude) and over what ``scope`` they are ranked (``global``: all prunable layers together; ``layer``:
    each layer by the same fraction). ``needs_gradients``: the scores need face batches (:func:`gradient_scores`).
    A new method is one registered subclass (and its test)."""

    scope = "global"
    needs_gradients = False

    def importance(self, layers: List[nn.Module], grads: Optional[Dict[nn.Module, torch.Tensor]],
                   seed: int) -> Optional[Dict[nn.Module, torch.Tensor]]:
        return None  # the weights' magnitude


PRUNERS: Registry[type] = Registry("pruning method")


@PRUNERS.register("global_weight")
class GlobalWeight(Pruner):
    """The smallest |w| over all prunable layers together."""


@PRUNERS.register("layer_weight")
class LayerWeight(Pruner):
    """The smallest |w| of each layer, every layer by the same fraction."""

    scope = "layer"


@PRUNERS.register("global_grad")
class GlobalGrad(Pruner):
    """The smallest |w * dL/dw| over all prunable layers (gradients of the margin loss on face batches)."""

    needs_gradients = True

    def importance(self, layers, grads, seed):
        return grads


@PRUNERS.register("layer_grad")
class LayerGrad(GlobalGrad):
    """|w * dL/dw| per layer."""

    scope = "layer"


@PRUNERS.register("random")
class RandomPruner(Pruner):
    """Uniformly random weights over all prunable layers (the baseline every method must beat)."""

    def importance(self, layers, grads, seed):
        g = torch.Generator().manual_seed(seed)
        return {mod: torch.rand(_weight(mod).shape, generator=g) for mod in layers}


METHODS = tuple(PRUNERS.names())


def prunable_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _weight(m: nn.Module) -> torch.Tensor:
    return m.weight  # with a mask attached this is orig * mask (recomputed by the pre-hook)


@dataclass
class SparsityReport:
    prunable: int
    prunable_nonzero: int
    total: int
    total_nonzero: int
    per_layer: Dict[str, float]        # fraction of zeros per prunable layer
    dense: List[str]                   # what was left dense, by kind

    @property
    def compression(self) -> float:
        return self.prunable / max(1, self.prunable_nonzero)

    @property
    def model_compression(self) -> float:
        return self.total / max(1, self.total_nonzero)


@torch.no_grad()
def sparsity(model: nn.Module) -> SparsityReport:
    """Compression measured by counting zeros (masked weights included, whatever their storage)."""
    layers = prunable_layers(model)
    per_layer = {}
    prunable = nonzero = 0
    for name, m in layers:
        w = _weight(m)
        n, nz = w.numel(), int((w != 0).sum())
        per_layer[name] = 1 - nz / n
        prunable += n
        nonzero += nz
    total = total_nz = 0
    for name, p in model.named_parameters():
        if name.endswith("weight_orig"):
            mod = model.get_submodule(name.rsplit(".", 1)[0])
            p = _weight(mod)
        total += p.numel()
        total_nz += int((p != 0).sum())
    dense_kinds = sorted({type(m).__name__ for m in model.modules()
                          if any(True for _ in m.parameters(recurse=False))
                          and not isinstance(m, (nn.Conv2d, nn.Linear))})
    return SparsityReport(prunable, nonzero, total, total_nz, per_layer, dense_kinds)


def gradient_scores(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                    s: float = 64.0, m: float = 0.5) -> Dict[nn.Module, torch.Tensor]:
    """|w * dL/dw| summed over ``batches`` of (normalised images, labels), L the ArcFace loss with class centres
    imprinted from the same batches (the mean normalised embedding of each class)."""
    from ..losses.heads import MarginHead
    from ..losses.margins import build_margin

    batches = list(batches)
    was_training = model.training
    model.eval()  # BatchNorm statistics of a trained model stay put; gradients still flow
    emb_dim = int(getattr(model, "embedding_size"))
    head = MarginHead(emb_dim, num_classes, build_margin("arcface", s=s, m=m))
    with torch.no_grad():
        sums = torch.zeros(num_classes, emb_dim)
        counts = torch.zeros(num_classes)
        for x, y in batches:
            e = F.normalize(model(x), dim=1)
            sums.index_add_(0, y, e)
            counts.index_add_(0, y, torch.ones(len(y)))
        seen = counts > 0
        head.fc.weight[seen] = sums[seen] / counts[seen, None]
    layers = [mod for _, mod in prunable_layers(model)]
    scores = {mod: torch.zeros_like(_weight(mod)) for mod in layers}
    params = [getattr(mod, "weight_orig", mod.weight) for mod in layers]
    for x, y in batches:
        loss = F.cross_entropy(head(model(x), y), y)
        grads = torch.autograd.grad(loss, params)
        for mod, g in zip(layers, grads):
            scores[mod] += (_weight(mod).detach() * g).abs()
    model.train(was_training)
    return scores


def prune_model(model: nn.Module, method: str, rate: float,
                scores: Optional[Dict[nn.Module, torch.Tensor]] = None, seed: int = 0) -> SparsityReport:
    """Prune ``model`` in place to compression rate ``rate`` over its prunable layers, by the registered pruning
    method ``method`` (:data:`PRUNERS`); ``scores``: the gradient scores a ``*_grad`` method needs."""
    pruner = PRUNERS.get(method)()
    if rate < 1:
        raise InputError(f"compression rate must be >= 1, got {rate}")
    amount = 1.0 - 1.0 / rate
    layers = [mod for _, mod in prunable_layers(model)]
    if pruner.needs_gradients and scores is None:
        raise InputError(f"{method} needs gradient scores (gradient_scores(model, batches, classes))")
    importance = pruner.importance(layers, scores, seed)
    if pruner.scope == "global":
        prune.global_unstructured([(mod, "weight") for mod in layers], pruning_method=prune.L1Unstructured,
                                  amount=amount, importance_scores=None if importance is None else
                                  {(mod, "weight"): importance[mod] for mod in layers})
    else:
        for mod in layers:
            prune.l1_unstructured(mod, "weight", amount=amount,
                                  importance_scores=None if importance is None else importance[mod])
    report = sparsity(model)
    logger.info("%s pruning to rate %.1f: %d of %d prunable weights left (rate %.3f); left dense: %s", method, rate,
                report.prunable_nonzero, report.prunable, report.compression, ", ".join(report.dense))
    return report


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (``weight_orig * mask`` becomes a plain parameter)."""
    for _, mod in prunable_layers(model):
        if prune.is_pruned(mod) and hasattr(mod, "weight_mask"):
            prune.remove(mod, "weight")
    return model
