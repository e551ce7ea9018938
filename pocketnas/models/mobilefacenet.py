"""MobileFaceNet: Chen, Liu, Gao, Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on
Mobile Devices", CCBR 2018 (arXiv 1804.07573).

With ``scale=1`` and ``blocks=(1, 4, 6, 2)`` this is the paper's network (0.99 M parameters at 128-d); module names
follow insightface's ``arcface_torch`` MobileFaceNet so its checkpoints (``scale=2``, 512-d) load too.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from ..errors import InputError
from ..image_size import Size, as_hw, recorded
from ..layers.checkpointing import GradCheckpointing
from .registry import ModelCfg, register_model


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
                 act: bool = True):
        super().__init__()
        layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
        if act:
            layers.append(nn.PReLU(c_out))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand (PReLU) -> 3x3 depthwise (PReLU) -> linear 1x1 project, optional residual."""

    def __init__(self, c_in: int, c_out: int, residual: bool, stride: int, expanded: int):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(c_in, expanded),
            ConvBlock(expanded, expanded, 3, stride, 1, groups=expanded),
            ConvBlock(expanded, c_out, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    def __init__(self, channels: int, blocks: int, expanded: int):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(channels, channels, True, 1, expanded) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution over the final map, then a linear embedding with BatchNorm."""

    def __init__(self, embedding_size: int, final_size: Size):
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(512, 512, final_size, groups=512, act=False),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(GradCheckpointing, nn.Module):
    def __init__(self, embedding_size: int = 128, blocks: Sequence[int] = (1, 4, 6, 2), scale: int = 1,
                 input_size: Size = 112):
        super().__init__()
        hw = as_hw(input_size)
        if hw[0] % 16 or hw[1] % 16:
            raise InputError(f"MobileFaceNet input sides must be multiples of 16 (e.g. 112, or [48, 96]), got "
                             f"{input_size}")
        self.embedding_size = embedding_size
        self.input_size = recorded(hw)
        self.input_hw = hw
        c64, c128 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList([ConvBlock(3, c64, 3, 2, 1)])
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c64, c64, 3, 1, 1, groups=64))
        else:
            self.layers.append(Residual(c64, blocks[0], 128))
        self.layers.extend([
            DepthWise(c64, c64, False, 2, 128),
            Residual(c64, blocks[1], 128),
            DepthWise(c64, c128, False, 2, 256),
            Residual(c128, blocks[2], 256),
            DepthWise(c128, c128, False, 2, 512),
            Residual(c128, blocks[3], 256),
        ])
        self.conv_sep = ConvBlock(c128, 512)
        self.features = GDC(embedding_size, (hw[0] // 16, hw[1] // 16))  # global depthwise over the final map
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.input_hw:
            h, w = self.input_hw
            raise InputError(f"MobileFaceNet expects N x 3 x {h} x {w} input, got {tuple(x.shape)}")
        for layer in self.layers:
            x = self.run_block(layer, x)
        return self.features(self.conv_sep(x))


@register_model(ModelCfg(family="mobilefacenet", embedding_size=128, paper="Chen et al., MobileFaceNets, CCBR 2018",
                         description="MobileFaceNet (paper configuration), 128-d"))
def mobilefacenet(**kwargs: Any) -> MobileFaceNet:
    return MobileFaceNet(**kwargs)
