"""A differentiable expected cost of the network a search will derive, for budget-aware search.

The cost of a derived PocketNet is additive over its kept edges: stem, cell pre-processing and tail are fixed, and
each kept edge adds its operation's parameters (or FLOPs) at that cell's width and resolution. Under the DARTS
relaxation the expected cost is

    E[cost] = fixed + sum_cells sum_edges (k / n_in) * sum_{o != none} p(o | edge) * cost(o, cell, edge)

with p the softmax of the edge's alphas over the operations a derivation can pick (``none`` excluded) and k / n_in
the share of a node's n_in incoming edges that it keeps. It is computed for the *final* network (its channels and
cells, e.g. PocketNetS: 16 x 18), not for the supernet, so ``--budget-params 1.0M`` means a 1.0 M-parameter
PocketNet. The loss is ``weight * log(E[cost] / target)^2``: symmetric in the ratio, and zero on target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.complexity import count_flops, count_parameters
from ..models.pocketnet import final_map_size, reduction_layers
from ..genotype import Genotype
from ..layers import make_op
from .space import SearchSpace


def _op_cost(name: str, channels: int, stride: int, size: int, act: str, metric: str) -> float:
    with torch.device("meta"):
        op = make_op(name, channels, stride, affine=True, act=act)
    if metric == "params":
        return float(count_parameters(op))

    class Wrap(torch.nn.Module):
        input_size = size

        def __init__(self):
            super().__init__()
            self.op = op

        def forward(self, x):
            return self.op(x[:, :1].expand(-1, channels, -1, -1))

    flops = count_flops(Wrap(), size)  # the meta input is 3 channels; widen it without cost
    return float(flops.total)


@dataclass
class CostModel:
    metric: str                      # "params" or "flops"
    fixed: float                     # stem, pre-processing, tail
    table: torch.Tensor              # cells x edges x operations
    keep: torch.Tensor               # edges: share of a node's incoming edges it keeps
    reduction: List[bool]
    none_index: int

    def expected(self, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor) -> torch.Tensor:
        total = alpha_normal.new_tensor(self.fixed)
        for which, alpha in ((False, alpha_normal), (True, alpha_reduce)):
            cells = [i for i, r in enumerate(self.reduction) if r == which]
            if not cells:
                continue
            logits = alpha.clone()
            if self.none_index >= 0:
                logits = logits.index_fill(1, torch.tensor([self.none_index], device=alpha.device), float("-inf"))
            p = F.softmax(logits, dim=-1)
            per_edge = (self.table[cells].to(alpha.device) * p.unsqueeze(0)).sum(-1)  # cells x edges
            total = total + (per_edge * self.keep.to(alpha.device)).sum()
        return total

    def of_genotype(self, genotype: Genotype) -> float:
        ops = self._ops
        total = self.fixed
        for c, red in enumerate(self.reduction):
            spec = genotype.reduce if red else genotype.normal
            start = 0
            for i, node in enumerate(spec):
                for op, src in node:
                    total += float(self.table[c, start + src, ops.index(op)])
                start += 2 + i
        return total

    def bounds(self, nodes: int, inputs_per_node: int) -> Tuple[float, float]:
        """An outer bound (low, high) of the cost of any genotype with ``nodes`` nodes of ``inputs_per_node``
        inputs: each node's cheapest (dearest) inputs with their cheapest (dearest) operation, cell by cell. A
        budget outside it is unreachable, which is said at once instead of after minutes of drawing."""
        ops = [i for i in range(self.table.shape[-1]) if i != self.none_index]
        low = high = self.fixed
        for c in range(len(self.reduction)):
            start = 0
            for i in range(nodes):
                k = min(inputs_per_node, 2 + i)
                edges = self.table[c, start:start + 2 + i][:, ops]
                low += float(edges.min(-1).values.sort().values[:k].sum())
                high += float(edges.max(-1).values.sort(descending=True).values[:k].sum())
                start += 2 + i
        return low, high

    def loss(self, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor, target: float,
             weight: float) -> torch.Tensor:
        return weight * torch.log(self.expected(alpha_normal, alpha_reduce) / target) ** 2


def build_cost_model(space: SearchSpace, metric: str, channels: int, layers: int, input_size: int = 112,
                     embedding_size: int = 128, stem_multiplier: int = 4) -> CostModel:
    """The cost model of a final PocketNet with ``channels`` x ``layers`` cells built from this space."""
    from ..models import create_model

    if metric not in ("params", "flops"):
        raise InputError(f"budget metric must be params or flops, not {metric!r}")
    ops = list(space.operations)
    reductions = reduction_layers(layers)
    size = final_map_size(input_size, 0)
    cache: Dict[tuple, float] = {}
    rows, flags = [], []
    c = channels
    for i in range(layers):
        red = i in reductions
        if red:
            c *= 2
        edges = []
        for node in range(space.nodes):
            for j in range(2 + node):
                stride = 2 if red and j < 2 else 1
                edge_size = size
                costs = []
                for name in ops:
                    if name == "none":
                        costs.append(0.0)
                        continue
                    key = (name, c, stride, edge_size)
                    if key not in cache:
                        cache[key] = _op_cost(name, c, stride, edge_size, space.activation, metric)
                    costs.append(cache[key])
                edges.append(costs)
        rows.append(edges)
        flags.append(red)
        if red:
            size = (size + 1) // 2
    table = torch.tensor(rows, dtype=torch.float64)
    keep = torch.tensor([space.inputs_per_node / (2 + node) for node in range(space.nodes) for _ in range(2 + node)],
                        dtype=torch.float64)
    model = CostModel(metric, 0.0, table, keep, flags, ops.index("none") if "none" in ops else -1)
    model._ops = ops  # type: ignore[attr-defined]
    # fixed part = whole network minus its edges, for any genotype of the space
    first = next(o for o in ops if o != "none")
    ref = Genotype(normal=[[(first, 0), (first, 1)] for _ in range(space.nodes)],
                   normal_concat=list(range(2, 2 + space.nodes)),
                   reduce=[[(first, 0), (first, 1)] for _ in range(space.nodes)],
                   reduce_concat=list(range(2, 2 + space.nodes)))
    with torch.device("meta"):
        net = create_model("pocketnet", genotype=ref, channels=channels, layers=layers, input_size=input_size,
                           embedding_size=embedding_size, stem_multiplier=stem_multiplier, act=space.activation)
    whole = float(count_parameters(net)) if metric == "params" else float(count_flops(net).total)
    model.fixed = whole - model.of_genotype(ref)
    return model


def parse_amount(text: str) -> float:
    """'1.0M' -> 1e6, '600M' -> 6e8, '2.5G' -> 2.5e9, '925632' -> 925632."""
    s = str(text).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(s[-1:], 1.0)
    number = s[:-1] if s[-1:] in "KMG" else s
    try:
        value = float(number) * scale
    except ValueError:
        raise InputError(f"cannot read {text!r} as an amount (e.g. 1.0M, 600M, 925632)") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"budget must be positive, got {text!r}")
    return value
