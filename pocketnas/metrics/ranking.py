"""Rank agreement between two scorings of the same items (a training-free proxy against trained accuracy, in
``pocketnas nas-eval``): Kendall's tau-b (Kendall, Biometrika 1945) with a permutation p-value."""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np


def _pair_signs(v: np.ndarray) -> np.ndarray:
    """sign(v_i - v_j) over the pairs i < j (0 for a tie), in ``np.triu_indices`` order; ``v`` may carry leading
    batch dimensions (one row per ordering)."""
    i, j = np.triu_indices(v.shape[-1], 1)
    return np.sign(v[..., i] - v[..., j])


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking accounted for); nan for fewer than two distinct pairs:
    (concordant - discordant) / sqrt(pairs untied in x * pairs untied in y)."""
    sx, sy = _pair_signs(np.asarray(x, float)), _pair_signs(np.asarray(y, float))
    denom = math.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))
    return float(sx @ sy) / denom if denom else float("nan")


def kendall_p(x: Sequence[float], y: Sequence[float], permutations: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Kendall's tau-b between ``x`` and ``y``: the share of orderings of ``y``
    whose tau is at least as far from zero as the observed one (the null of no association). Every ordering is
    enumerated up to 8 values; beyond, ``permutations`` seeded draws with the add-one correction (Phipson and
    Smyth, 2010). Permuting ``y`` keeps both rankings' ties, hence tau-b's denominator: only the numerator moves.
    nan where tau is."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if math.isnan(kendall_tau(x, y)):
        return float("nan")
    sx = _pair_signs(x)
    observed = abs(float(sx @ _pair_signs(y)))
    n = len(x)
    if n <= 8:
        orders, exact = np.array(list(itertools.permutations(range(n)))), True
    else:
        rng = np.random.default_rng(seed)
        orders, exact = np.stack([rng.permutation(n) for _ in range(permutations)]), False
    extreme = sum(int(np.sum(np.abs(_pair_signs(y[chunk]) @ sx) >= observed - 1e-9))
                  for chunk in np.array_split(orders, max(1, len(orders) // 4096)))
    return extreme / len(orders) if exact else (extreme + 1) / (len(orders) + 1)
