"""Baseline searchers, the comparison a searched cell must win (Li and Talwalkar, UAI 2019; Yang et al., ICLR
2020): random genotypes of a space within a budget window, and the best of N random genotypes by a training-free
proxy (Abdelfattah et al., ICLR 2021). Each writes its genotypes as ``NAME.json`` and ``candidates.json`` (every
entry with its cost and scores), which ``pocketnas nas-eval`` trains and correlates."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..atomic import atomic_write, atomic_write_json
from ..genotype import get_genotype
from ..image_size import Size, as_hw
from .random_search import Budget, sample_genotypes
from .space import SearchSpace
from .zero_cost import PROXIES, rank_genotypes, top_k

CANDIDATES = "candidates.json"


def face_batch(data: str, count: int = 64, size: Size = 56, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``count`` faces of ``data`` drawn with ``seed`` (normalised, at ``size``: a side or (height, width)) and
    their labels: what the zero-cost proxies score a network on."""
    from ..data.transforms import fit_size, normalize
    from ..data.face_sets import open_face_dataset

    hw = as_hw(size)
    faces = open_face_dataset(data, 112 if hw[0] == hw[1] else hw)  # a periocular pack is read at its own shape
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(faces), size=min(count, len(faces)), replace=False))
    pairs = [faces.sample_uint8(int(i)) for i in idx]
    images = torch.stack([torch.from_numpy(np.ascontiguousarray(img)) for img, _ in pairs])
    labels = torch.tensor([int(label) for _, label in pairs])
    return normalize(fit_size(images, size)), labels


def write_candidates(out_dir: str, method: str, entries: List[Dict[str, Any]], settings: Dict[str, Any]) -> str:
    """Each entry's genotype as ``NAME.json`` and the list as ``candidates.json`` (atomically); returns its path."""
    for e in entries:
        atomic_write(os.path.join(out_dir, f"{e['name']}.json"), get_genotype(e["genotype"]).to_json())
    path = os.path.join(out_dir, CANDIDATES)
    atomic_write_json(path, {"method": method, "settings": settings, "entries": entries}, sort_keys=False)
    return path


def random_search(space: SearchSpace, out_dir: str, count: int, seed: int, budget: Optional[Budget]) -> str:
    """``count`` random genotypes of ``space`` in the budget window, written as ``random_NN.json`` and
    ``candidates.json``."""
    found = sample_genotypes(space, count, seed, budget)
    entries = [{"name": f"random_{i:02d}", "source": "random", "genotype": g.to_dict(),
                "cost": cost, "scores": {}} for i, (g, cost) in enumerate(found)]
    return write_candidates(out_dir, "random", entries, {"space": space.name, "count": count, "seed": seed,
                                                          "budget": budget.__dict__ if budget else None})


def zero_cost_search(space: SearchSpace, out_dir: str, data: str, candidates: int, top: int, proxy: str,
                     seed: int, budget: Optional[Budget], input_size: int = 56, batch: int = 64,
                     proxies: Optional[Sequence[str]] = None, progress: bool = True) -> str:
    """Score ``candidates`` random genotypes with every proxy on one batch of faces of ``data``; keep the ``top``
    by ``proxy`` as ``zc_NN.json``. ``candidates.json`` holds every candidate's scores (for the rank
    correlations of ``nas-eval``)."""
    proxies = PROXIES.names() if proxies is None else proxies
    if proxy not in proxies:
        proxies = tuple(proxies) + (proxy,)
    found = sample_genotypes(space, candidates, seed, budget)
    images, labels = face_batch(data, batch, input_size, seed)
    build = {"channels": budget.channels if budget else 16, "layers": budget.layers if budget else 18,
             "embedding_size": budget.embedding_size if budget else 128, "seed": seed, "act": space.activation}
    scores = rank_genotypes([g for g, _ in found], images, labels, proxies, progress=progress, **build)
    best = top_k(scores, proxy, top)
    entries = [{"name": f"zc_{rank:02d}", "source": f"zero-cost ({proxy})", "genotype": found[i][0].to_dict(),
                "cost": found[i][1], "scores": scores[i], "candidate": i} for rank, i in enumerate(best)]
    every = [{"genotype": g.to_dict(), "cost": c, "scores": s} for (g, c), s in zip(found, scores)]
    path = write_candidates(out_dir, "zero-cost", entries, {"space": space.name, "candidates": candidates,
                                                             "top": top, "proxy": proxy, "seed": seed,
                                                             "input_size": input_size, "batch": batch,
                                                             "budget": budget.__dict__ if budget else None})
    atomic_write_json(os.path.join(out_dir, "all_candidates.json"), every, sort_keys=False)
    return path
