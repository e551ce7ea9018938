"""Random search over a search space, at a fixed size: the baseline every NAS result must beat (Li and Talwalkar,
"Random Search and Reproducibility for Neural Architecture Search", UAI 2019; Yang et al., "NAS evaluation is
frustratingly hard", ICLR 2020).

A genotype is drawn uniformly: for each intermediate node of each cell type, ``inputs_per_node`` distinct inputs
among the cell's two inputs and the earlier nodes, and for each an operation of the space other than ``none`` (as
DARTS derives its cells). It is kept only when the final network it builds costs ``target`` within ``tolerance``
(parameters or FLOPs, counted exactly by :class:`~pocketnas.nas.budget.CostModel`), so a random row and a searched
row of a comparison have the same size.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..genotype import Genotype
from .budget import CostModel, build_cost_model
from .space import SearchSpace

logger = logging.getLogger(__name__)


def random_cell(space: SearchSpace, rng: np.random.Generator) -> Tuple[Tuple[Tuple[str, int], ...], ...]:
    ops = [o for o in space.operations if o != "none"]
    if not ops:
        raise InputError(f"search space {space.name} has no operation besides none")
    nodes = []
    for i in range(space.nodes):
        k = min(space.inputs_per_node, 2 + i)
        inputs = sorted(rng.choice(2 + i, size=k, replace=False).tolist())
        nodes.append(tuple((ops[int(rng.integers(len(ops)))], int(j)) for j in inputs))
    return tuple(nodes)


def random_genotype(space: SearchSpace, rng: np.random.Generator) -> Genotype:
    """One genotype drawn uniformly from ``space`` (valid by construction)."""
    concat = list(range(2, 2 + space.nodes))
    g = Genotype(normal=random_cell(space, rng), normal_concat=concat, reduce=random_cell(space, rng),
                 reduce_concat=concat)
    return g.validate(space.operations, space.inputs_per_node)


@dataclass
class Budget:
    """A size window for the final network: ``metric`` (params or flops) at ``target`` within ``tolerance``."""

    metric: str
    target: float
    tolerance: float = 0.05
    channels: int = 16
    layers: int = 18
    input_size: int = 112
    embedding_size: int = 128

    def cost_model(self, space: SearchSpace) -> CostModel:
        return build_cost_model(space, self.metric, self.channels, self.layers, self.input_size,
                                self.embedding_size)

    def fits(self, cost: float) -> bool:
        return abs(cost - self.target) <= self.tolerance * self.target


def sample_genotypes(space: SearchSpace, count: int, seed: int = 0, budget: Optional[Budget] = None,
                     max_draws: int = 200000) -> List[Tuple[Genotype, Optional[float]]]:
    """``count`` distinct random genotypes (with their cost under ``budget``, which they all fit); seeded. Raises
    when ``max_draws`` draws do not find enough (a window the space cannot reach)."""
    rng = np.random.default_rng(seed)
    model = budget.cost_model(space) if budget else None
    if model is not None:
        low, high = model.bounds(space.nodes, space.inputs_per_node)
        if budget.target * (1 + budget.tolerance) < low or budget.target * (1 - budget.tolerance) > high:
            raise InputError(f"{budget.metric} {budget.target:,.0f} +- {100 * budget.tolerance:.0f} % is out of "
                             f"reach: every genotype of {space.name} at {budget.channels} channels x "
                             f"{budget.layers} layers costs between {low:,.0f} and {high:,.0f}; change the budget "
                             f"or channels/layers")
    found: List[Tuple[Genotype, Optional[float]]] = []
    seen = set()
    draws = 0
    while len(found) < count:
        if draws >= max_draws:
            raise InputError(f"only {len(found)} of {count} random genotypes of {space.name} fit {budget.metric} "
                             f"{budget.target:,.0f} +- {100 * budget.tolerance:.0f} % in {max_draws} draws; widen "
                             f"the window or change channels/layers")
        draws += 1
        g = random_genotype(space, rng)
        key = g.to_legacy()
        if key in seen:
            continue
        cost = model.of_genotype(g) if model is not None else None
        if budget is not None and not budget.fits(cost):
            continue
        seen.add(key)
        found.append((g, cost))
    logger.info("random search: %d genotypes of %s in %d draws%s", count, space.name, draws,
                f" ({budget.metric} {budget.target:,.0f} +- {100 * budget.tolerance:.0f} %)" if budget else "")
    return found
