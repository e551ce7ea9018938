"""A genotype's cell as a discrete module (the final network's cell; the supernet has its mixed counterpart).

Cell computation as in DARTS (Liu et al., ICLR 2019): node j = sum over its kept edges of op(state[input]); the
cell output concatenates the ``concat`` nodes along channels.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from ..genotype import Genotype
from ..layers import make_op, preprocess_op
from .se import SqueezeExcite


class SearchedCell(nn.Module):
    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, channels: int, reduction_prev: bool,
                 reduction: bool, act: str = "prelu", se: bool = False):
        super().__init__()
        self.reduction = reduction
        self.preproc0 = preprocess_op(c_pp, channels, reduction_prev, act=act)
        self.preproc1 = preprocess_op(c_p, channels, False, act=act)
        spec = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.inputs: List[List[int]] = []
        self.dag = nn.ModuleList()
        for node in spec:
            edges = nn.ModuleList()
            for op_name, idx in node:
                stride = 2 if reduction and idx < 2 else 1
                edges.append(make_op(op_name, channels, stride, affine=True, act=act))
            self.dag.append(edges)
            self.inputs.append([idx for _, idx in node])
        self.multiplier = len(self.concat)
        self.se = SqueezeExcite(self.multiplier * channels) if se else None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preproc0(s0), self.preproc1(s1)]
        for edges, inputs in zip(self.dag, self.inputs):
            out = edges[0](states[inputs[0]])
            for op, idx in zip(edges[1:], inputs[1:]):
                out = out + op(states[idx])
            states.append(out)
        out = torch.cat([states[i] for i in self.concat], dim=1)
        return out if self.se is None else self.se(out)
