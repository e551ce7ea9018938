"""Training-free proxies: score a network at initialisation on a few batches of faces, in seconds, and keep the
best-scoring genotypes of many random candidates (the "zero-cost" searcher).

* ``naswot`` (Mellor, Turner, Storkey and Crowley, "Neural Architecture Search without Training", ICML 2021, eq. 2):
  each image's binary code of which activation units are positive; K_H[i, j] = N_A - Hamming(c_i, c_j);
  score = log |det K_H|. Networks that separate the images' activation patterns score higher.
* ``synflow`` (Tanaka et al., NeurIPS 2020, as a NAS proxy by Abdelfattah et al., "Zero-Cost Proxies for
  Lightweight NAS", ICLR 2021): with |weights| and an all-ones input, R = sum of the output;
  score = sum over parameters of |theta * dR/dtheta| (float64, BatchNorm at its initial statistics).
* ``grad_norm`` (Abdelfattah et al. 2021): the sum of the parameters' gradient L2 norms of the margin loss on a
  batch (ArcFace through a fresh normalised classifier over the batch's identities).

Every score is a function of (genotype, network settings, seed, batches): deterministic for a fixed seed.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..genotype import Genotype
from ..losses.heads import MarginHead
from ..losses.margins import build_margin
from ..registry import Registry

logger = logging.getLogger(__name__)

Proxy = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
PROXIES: Registry[Proxy] = Registry("zero-cost proxy")


@PROXIES.register("naswot")
def naswot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    codes: List[torch.Tensor] = []

    def hook(module, inputs, output):
        codes.append((inputs[0].detach() > 0).flatten(1).to(torch.float64))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.PReLU, nn.ReLU))]
    try:
        model.train()  # batch statistics, as at the start of training
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    c = torch.cat(codes, 1)
    k = c @ c.T + (1 - c) @ (1 - c).T  # N_A minus the Hamming distance
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if float(sign) > 0 else float("-inf")


@PROXIES.register("synflow")
def synflow(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net = model.double().eval()
    signs = {}
    with torch.no_grad():
        for name, p in net.state_dict().items():
            if p.is_floating_point():
                signs[name] = torch.sign(p)
                p.abs_()
    net.zero_grad()
    ones = torch.ones((1,) + tuple(images.shape[1:]), dtype=torch.float64)
    net(ones).sum().backward()
    score = sum(float((p.detach() * p.grad).abs().sum()) for p in net.parameters() if p.grad is not None)
    with torch.no_grad():
        for name, p in net.state_dict().items():
            if name in signs:
                p.mul_(signs[name])
    model.float()
    return score


@PROXIES.register("grad_norm")
def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    classes, index = torch.unique(labels, return_inverse=True)
    model.train()
    emb = model(images)
    gen = torch.Generator().manual_seed(0)
    head = MarginHead(emb.shape[1], len(classes), build_margin("arcface", s=32.0, m=0.3))
    with torch.no_grad():
        head.fc.weight.copy_(torch.randn(head.fc.weight.shape, generator=gen) * 0.01)
    model.zero_grad()
    nn.functional.cross_entropy(head(emb, index), index).backward()
    return float(sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None))


def score_genotype(genotype: Genotype, proxy: str, images: torch.Tensor, labels: torch.Tensor, channels: int = 16,
                   layers: int = 18, embedding_size: int = 128, seed: int = 0, act: str = "prelu") -> float:
    """``proxy``'s score of the PocketNet built from ``genotype`` at initialisation (weights drawn with ``seed``)."""
    from ..models import create_model

    fn = PROXIES.get(proxy)
    torch.manual_seed(seed)
    model = create_model("pocketnet", genotype=genotype, channels=channels, layers=layers,
                         input_size=int(images.shape[-1]), embedding_size=embedding_size, act=act)
    return float(fn(model, images, labels))


def rank_genotypes(candidates: Sequence[Genotype], images: torch.Tensor, labels: torch.Tensor,
                   proxies: Optional[Sequence[str]] = None, progress: bool = True,
                   **build) -> List[Dict[str, float]]:
    """Every proxy's score (``proxies``: default every registered one) of every candidate (a list of {proxy:
    score}, in the candidates' order)."""
    from tqdm import tqdm

    proxies = PROXIES.names() if proxies is None else proxies
    for p in proxies:
        PROXIES.get(p)
    return [{p: score_genotype(g, p, images, labels, **build) for p in proxies}
            for g in tqdm(candidates, desc="zero-cost scores", unit="genotype", disable=not progress)]


def top_k(scores: Sequence[Dict[str, float]], proxy: str, k: int) -> List[int]:
    """Indices of the ``k`` best candidates by ``proxy`` (higher is better), best first."""
    values = np.array([s[proxy] for s in scores], dtype=np.float64)
    return [int(i) for i in np.argsort(-values, kind="stable")[:k]]


__all__ = ["PROXIES", "grad_norm", "naswot", "rank_genotypes", "score_genotype", "synflow", "top_k"]
