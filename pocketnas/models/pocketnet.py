"""PocketNet: a DARTS-searched cell stack with a MobileFaceNet-style embedding tail.

Boutros, Siebke, Klemt, Damer, Kirchbuchner, Kuijper, "PocketNet: Extreme Lightweight Face Recognition Network
using Neural Architecture Search and Multi-Step Knowledge Distillation", IEEE Access 2022 (arXiv 2108.10710).

Stem: 3x3 conv stride 2 + BN. Cells: reductions at n//3, 2n//3 and n-1 (channels double there). Tail (from
MobileFaceNet, Chen et al. 2018): act, 1x1 conv to the tail width, BN, act, global depthwise conv over the final map,
BN, 1x1 conv to the embedding, BN. Input: float N x 3 x S x S RGB normalised as (x/255 - 0.5)/0.5; output the
un-normalised N x embedding. Module names reproduce the release's ``backbone.pth`` keys.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from ..errors import InputError
from ..genotype import Genotype, get_genotype
from ..image_size import Size, as_hw, recorded
from ..layers import activation
from ..layers.checkpointing import GradCheckpointing
from .pretrained import SHIPPED
from .registry import ModelCfg, register_model
from .cells import SearchedCell

PAPER = "Boutros et al., PocketNet, IEEE Access 2022 (arXiv 2108.10710)"


def pocketnet_stem(channels: int) -> nn.Sequential:
    """PocketNet's stem (and its supernet's): 3x3 conv, stride 2, BatchNorm."""
    return nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels))


def pocketnet_tail(c_in: int, width: int, final_size: Size, embedding_size: int, act: str) -> nn.Sequential:
    """PocketNet's tail after the cells (MobileFaceNet's, Chen et al. 2018), for the final network and the
    supernet alike: act, 1x1 conv to ``width``, BN, act, a global depthwise conv over the ``final_size`` map (a side
    or (height, width)), BN,
    1x1 conv to the embedding, BN."""
    return nn.Sequential(
        activation(act, c_in),
        nn.Conv2d(c_in, width, 1, bias=False),
        nn.BatchNorm2d(width),
        activation(act, width),
        nn.Conv2d(width, width, final_size, groups=width, bias=False),  # global depthwise conv over the final map
        nn.BatchNorm2d(width),
        nn.Conv2d(width, embedding_size, 1, bias=False),
        nn.BatchNorm2d(embedding_size),
    )


def reduction_layers(layers: int):
    """Indices of the reduction cells: n//3, 2n//3 and n-1 (PocketNet's placement)."""
    return sorted({layers // 3, 2 * layers // 3, layers - 1})


def final_map_size(input_size: int, reductions: int) -> int:
    """One side of the last cell's output: the stem halves ``input_size`` (rounding up), each reduction again."""
    size = math.ceil(input_size / 2)  # the stem's stride
    for _ in range(reductions):
        size = math.ceil(size / 2)
    return size


class PocketNet(GradCheckpointing, nn.Module):
    def __init__(self, genotype: Union[str, Dict[str, Any], Genotype] = "pocketnet_casia", channels: int = 16,
                 layers: int = 18, embedding_size: int = 128, stem_multiplier: int = 4, input_size: Size = 112,
                 tail_width: Optional[int] = None, act: str = "prelu", se: bool = False):
        super().__init__()
        self.genotype = get_genotype(genotype).validate()
        if layers < 3:
            raise InputError(f"a PocketNet needs at least 3 cells (3 reductions), got layers={layers}")
        if channels < 1 or embedding_size < 1:
            raise InputError(f"channels and embedding_size must be positive, got {channels}, {embedding_size}")
        hw = as_hw(input_size)
        if min(hw) < 16 or hw[0] % 8 or hw[1] % 8:
            raise InputError(f"a PocketNet's input sides must be multiples of 8 from 16 on (e.g. 112, or [48, 96] "
                             f"for a periocular band), got {input_size}")
        self.embedding_size = embedding_size
        self.input_size = recorded(hw)
        self.input_hw = hw
        self.se = se
        self.tail_width = tail_width or (512 if embedding_size <= 256 else 2 * embedding_size)
        reductions = reduction_layers(layers)
        # the global depthwise tail's kernel covers the whole final map, whatever the input's aspect
        final_hw = tuple(final_map_size(side, len(reductions)) for side in hw)
        self.final_size = final_hw[0] if final_hw[0] == final_hw[1] else final_hw

        c_stem = stem_multiplier * channels
        self.stem = pocketnet_stem(c_stem)
        c_pp, c_p, c_cur = c_stem, c_stem, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_cur *= 2
            cell = SearchedCell(self.genotype, c_pp, c_p, c_cur, reduction_prev, reduction, act=act, se=se)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_cur

        self.tail = pocketnet_tail(c_p, self.tail_width, self.final_size, embedding_size, act)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def recorded_kwargs(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """Constructor arguments as a checkpoint records them: the genotype by value, never by name or path."""
        return {**kwargs, "genotype": self.genotype.to_dict()} if "genotype" in kwargs else dict(kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.input_hw:
            h, w = self.input_hw
            raise InputError(f"{type(self).__name__} expects N x 3 x {h} x {w} input, got {tuple(x.shape)}; build it "
                             f"with input_size=[height, width] for other crops")
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, self.run_block(cell, s0, s1)
        return self.tail(s1).flatten(1)


def _cfg(emb: int, params: int, mflops: float, desc: str, name: str) -> ModelCfg:
    return ModelCfg(family="pocketnet", embedding_size=emb, paper=PAPER, description=desc,
                    reference_params=params, reference_mflops=mflops, pretrained=SHIPPED.get(name))


@register_model(_cfg(128, 925_632, 587.11, "PocketNetS-128: 16 channels x 18 cells, 128-d", "pocketnet_s_128"))
def pocketnet_s_128(**kwargs: Any) -> PocketNet:
    return PocketNet(**{"channels": 16, "layers": 18, "embedding_size": 128, **kwargs})


@register_model(_cfg(256, 991_424, 587.24, "PocketNetS-256: 16 channels x 18 cells, 256-d", "pocketnet_s_256"))
def pocketnet_s_256(**kwargs: Any) -> PocketNet:
    return PocketNet(**{"channels": 16, "layers": 18, "embedding_size": 256, **kwargs})


@register_model(_cfg(128, 1_686_656, 1099.02, "PocketNetM-128: 32 channels x 9 cells, 128-d", "pocketnet_m_128"))
def pocketnet_m_128(**kwargs: Any) -> PocketNet:
    return PocketNet(**{"channels": 32, "layers": 9, "embedding_size": 128, **kwargs})


@register_model(_cfg(256, 1_752_448, 1099.16, "PocketNetM-256: 32 channels x 9 cells, 256-d", "pocketnet_m_256"))
def pocketnet_m_256(**kwargs: Any) -> PocketNet:
    return PocketNet(**{"channels": 32, "layers": 9, "embedding_size": 256, **kwargs})


@register_model(ModelCfg(family="pocketnet", embedding_size=128, paper=PAPER,
                         description="any genotype: pass genotype=, channels=, layers=, embedding_size=",
                         tags=("generic",)))
def pocketnet(**kwargs: Any) -> PocketNet:
    return PocketNet(**kwargs)
