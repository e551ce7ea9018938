"""The search supernet: every edge of every cell is a mixture of the space's operations, weighted by
softmax(alpha) (Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019, eq. 2), optionally through a
fraction 1/k of the channels with edge normalisation (Xu et al., "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020, eqs. 3-4).

Built from the one operation registry (:mod:`pocketnas.layers`) with non-affine BatchNorm, in PocketNet's frame:
stem, reduction cells at n//3, 2n//3, n-1, MobileFaceNet-style tail whose global depthwise kernel follows the final
map size (so 56x56 or 112x112 crops both work). Network weights and architecture parameters are kept apart:
:meth:`Supernet.weights` and :meth:`Supernet.alphas`.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..models.pocketnet import final_map_size, pocketnet_stem, pocketnet_tail
from ..genotype import Genotype
from ..layers import make_op, preprocess_op
from .space import SearchSpace


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (Zhang et al., CVPR 2018), as PC-DARTS uses it after a partial mixed operation:
    channel ``g * (C / groups) + i`` goes to ``i * groups + g``. A channels-last input gives a channels-last output
    (a reshape of the NCHW view would come back NCHW, and every operation after it would then run in the slower
    layout or convert back)."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        rows = x.permute(0, 2, 3, 1)  # (N, H, W, C), a view
        shuffled = rows.reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c)
        return shuffled.permute(0, 3, 1, 2)
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedOp(nn.Module):
    """sum_o w_o * o(x). ``skip_none``: the ``none`` operation's output is zero, so it is not computed (exact: its
    weight still takes part in the softmax). ``partial_k`` > 1: only the first C/k channels go through the
    operations, the rest bypass (pooled on reduction edges), then channels are shuffled (PC-DARTS)."""

    def __init__(self, channels: int, stride: int, operations: Sequence[str], act: str, partial_k: int = 1,
                 skip_none: bool = True):
        super().__init__()
        if channels % partial_k:
            raise InputError(f"partial channels: {channels} channels are not divisible by k={partial_k}")
        self.k = partial_k
        self.stride = stride
        self.names = list(operations)
        inner = channels // partial_k
        self.compute = [i for i, name in enumerate(self.names) if not (skip_none and name == "none")]
        self.ops = nn.ModuleList(make_op(name, inner, stride, affine=False, act=act) for name in self.names)

    def _mix(self, x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        out = None
        for i in self.compute:
            op = self.ops[i]
            # operations ending in BatchNorm take their weight as its scale (no multiplication of their own)
            y = op(x, weights[i]) if getattr(op, "scales_output", False) else weights[i] * op(x)
            out = y if out is None else out + y
        return out

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """``weights``: the edge's operation weights, a 1-d tensor or a sequence of 0-d tensors."""
        if self.k == 1:
            return self._mix(x, weights)
        c = x.shape[1] // self.k
        xa, xb = x[:, :c], x[:, c:]
        out = self._mix(xa, weights)
        if self.stride == 2:
            xb = F.max_pool2d(xb, 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.k)


class SearchCell(nn.Module):
    def __init__(self, space: SearchSpace, c_pp: int, c_p: int, channels: int, reduction_prev: bool,
                 reduction: bool, partial_k: int = 1, skip_none: bool = True):
        super().__init__()
        self.reduction = reduction
        self.nodes = space.nodes
        self.preproc0 = preprocess_op(c_pp, channels, reduction_prev, affine=False, act=space.activation)
        self.preproc1 = preprocess_op(c_p, channels, False, affine=False, act=space.activation)
        self.dag = nn.ModuleList()
        for i in range(space.nodes):
            self.dag.append(nn.ModuleList(
                MixedOp(channels, 2 if reduction and j < 2 else 1, space.operations, space.activation, partial_k,
                        skip_none) for j in range(2 + i)))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]],
                edge_weights: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """``weights[e]``: edge e's operation weights; ``edge_weights[e]``: its PC-DARTS edge weight (or None)."""
        states = [self.preproc0(s0), self.preproc1(s1)]
        e = 0
        for edges in self.dag:
            out: Optional[torch.Tensor] = None
            for j, op in enumerate(edges):
                y = op(states[j], weights[e])
                if edge_weights is not None:
                    y = edge_weights[e] * y
                out = y if out is None else out + y
                e += 1
            states.append(out)
        return torch.cat(states[2:], dim=1)


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace, num_classes: int, channels: int = 16, layers: int = 8,
                 stem_multiplier: int = 3, embedding_size: int = 128, input_size: int = 112,
                 partial_k: int = 1, skip_none: bool = True, tail_width: int = 512):
        super().__init__()
        self.space = space
        self.channels, self.layers, self.input_size = channels, layers, input_size
        self.partial_k = partial_k
        self.embedding_size = embedding_size
        reductions = space.reduction_layers(layers)
        self.reductions = reductions
        c_stem = stem_multiplier * channels
        self.stem = pocketnet_stem(c_stem)  # the final network's own stem and tail: one definition
        c_pp, c_p, c_cur = c_stem, c_stem, channels
        self.cells = nn.ModuleList()
        self.cell_channels: List[int] = []
        self.cell_sizes: List[int] = []
        size = final_map_size(input_size, 0)
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_cur *= 2
            self.cell_sizes.append(size)  # the cell's input resolution
            self.cells.append(SearchCell(space, c_pp, c_p, c_cur, reduction_prev, reduction, partial_k, skip_none))
            self.cell_channels.append(c_cur)
            if reduction:
                size = (size + 1) // 2
            reduction_prev = reduction
            c_pp, c_p = c_p, space.nodes * c_cur
        self.final_size = size
        self.tail = pocketnet_tail(c_p, tail_width, size, embedding_size, space.activation)
        n_edges, n_ops = space.edges_per_cell, len(space.operations)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        if partial_k > 1:  # PC-DARTS edge normalisation
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(n_edges))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(n_edges))
        else:
            self.beta_normal = self.beta_reduce = None
        self.num_classes = num_classes

    # -- the two parameter sets, kept apart
    def alphas(self) -> List[nn.Parameter]:
        out = [self.alpha_normal, self.alpha_reduce]
        if self.beta_normal is not None:
            out += [self.beta_normal, self.beta_reduce]
        return out

    def weights(self) -> Iterator[nn.Parameter]:
        ids = {id(a) for a in self.alphas()}
        return (p for p in self.parameters() if id(p) not in ids)

    def named_weights(self) -> Iterator[Tuple[str, nn.Parameter]]:
        ids = {id(a) for a in self.alphas()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in ids)

    def edge_weights(self, beta: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Softmax of beta over each node's incoming edges (PC-DARTS)."""
        if beta is None:
            return None
        out, start = [], 0
        for i in range(self.space.nodes):
            n = 2 + i
            out.append(F.softmax(beta[start:start + n], dim=-1))
            start += n
        return torch.cat(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"supernet built for {self.input_size}x{self.input_size} input, got {tuple(x.shape)}")
        w_normal = self._split(F.softmax(self.alpha_normal, dim=-1))
        w_reduce = self._split(F.softmax(self.alpha_reduce, dim=-1))
        e_normal = self.edge_weights(self.beta_normal)
        e_reduce = self.edge_weights(self.beta_reduce)
        e_normal = None if e_normal is None else e_normal.unbind()
        e_reduce = None if e_reduce is None else e_reduce.unbind()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal)
        return self.tail(s1).flatten(1)

    @staticmethod
    def _split(weights: torch.Tensor) -> List[Sequence[torch.Tensor]]:
        """(edges, ops) weights as one 0-d tensor per (edge, op), by one ``unbind``: indexing each weight
        separately would add a node per operation to the autograd graph, each of whose backward builds a zero
        tensor of the whole shape to put one value in (about 900 of them per pass at 8 cells)."""
        n = weights.shape[1]
        flat = weights.reshape(-1).unbind()
        return [flat[e * n:(e + 1) * n] for e in range(weights.shape[0])]

    # -- derivation
    def op_probabilities(self) -> Dict[str, torch.Tensor]:
        return {"normal": F.softmax(self.alpha_normal.detach(), -1),
                "reduce": F.softmax(self.alpha_reduce.detach(), -1)}

    def genotype(self, max_skips: Optional[int] = None) -> Genotype:
        return derive_genotype(self.space, self.alpha_normal.detach(), self.alpha_reduce.detach(),
                               self.edge_weights(None if self.beta_normal is None else self.beta_normal.detach()),
                               self.edge_weights(None if self.beta_reduce is None else self.beta_reduce.detach()),
                               max_skips)


def _derive_cell(space: SearchSpace, alpha: torch.Tensor, edge_w: Optional[torch.Tensor],
                 max_skips: Optional[int]) -> List[List[Tuple[str, int]]]:
    ops = list(space.operations)
    probs = F.softmax(alpha, dim=-1)
    candidates = [i for i, name in enumerate(ops) if name != "none"]
    ranked = []  # per edge: (strength, op index order best first)
    for e in range(len(probs)):
        p = probs[e].clone()
        if edge_w is not None:
            p = p * edge_w[e]
        order = sorted(candidates, key=lambda i: -float(p[i]))
        ranked.append((float(p[order[0]]), order))
    cell: List[List[Tuple[str, int]]] = []
    chosen: List[Tuple[int, int, float]] = []  # (node, edge index, strength) of kept skip edges
    start = 0
    for i in range(space.nodes):
        n = 2 + i
        edges = sorted(range(n), key=lambda j: -ranked[start + j][0])[: space.inputs_per_node]
        node = []
        for j in sorted(edges):
            best = ranked[start + j][1][0]
            node.append((ops[best], j))
            if ops[best] == "skip_connect":
                chosen.append((i, start + j, ranked[start + j][0]))
        cell.append(node)
        start += n
    if max_skips is not None and len(chosen) > max_skips:
        # keep the strongest skips; each other skip edge takes its best operation that is neither skip nor none
        for node_i, e, _ in sorted(chosen, key=lambda t: t[2])[: len(chosen) - max_skips]:
            alt = next(ops[i] for i in ranked[e][1] if ops[i] != "skip_connect")
            j = e - sum(2 + k for k in range(node_i))
            cell[node_i] = [(alt if src == j and name == "skip_connect" else name, src) for name, src in cell[node_i]]
    return cell


def derive_genotype(space: SearchSpace, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor,
                    edge_normal: Optional[torch.Tensor] = None, edge_reduce: Optional[torch.Tensor] = None,
                    max_skips: Optional[int] = None) -> Genotype:
    """DARTS derivation: per edge the strongest operation other than ``none``; per node the ``inputs_per_node``
    edges whose best operation is strongest. ``max_skips`` caps skip connections in the normal cell (the guard
    against DARTS' collapse into parameter-free cells, Chen et al. P-DARTS 2019)."""
    concat = list(range(2, 2 + space.nodes))
    return Genotype(normal=_derive_cell(space, alpha_normal, edge_normal, max_skips), normal_concat=concat,
                    reduce=_derive_cell(space, alpha_reduce, edge_reduce, None), reduce_concat=concat).validate(
        ops=space.operations, inputs_per_node=space.inputs_per_node)


def count_skips(genotype: Genotype) -> int:
    return sum(1 for node in genotype.normal for op, _ in node if op == "skip_connect")
