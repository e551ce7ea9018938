"""Improved ResNets (iResNet) as used by insightface's ArcFace models: the usual teachers for distillation.

Duta, Liu, Zhu, Shao, "Improved Residual Networks for Image and Video Recognition", ICPR 2020; the face variant of
Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
Module names follow insightface's ``arcface_torch`` so its released ``backbone.pth`` files load.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import InputError
from ..image_size import Size, as_hw, recorded
from ..layers.checkpointing import GradCheckpointing
from .registry import ModelCfg, register_model
from .se import SqueezeExcite

PAPER = "Deng et al., ArcFace, CVPR 2019; Duta et al., iResNet, ICPR 2020"


class IBasicBlock(nn.Module):
    """BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, plus the (projected) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 se: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample
        self.se = SqueezeExcite(planes) if se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            out = self.se(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(GradCheckpointing, nn.Module):
    def __init__(self, layers: Sequence[int], embedding_size: int = 512, dropout: float = 0.0,
                 input_size: Size = 112, se: bool = False):
        super().__init__()
        hw = as_hw(input_size)
        if hw[0] % 16 or hw[1] % 16:
            raise InputError(f"iResNet input sides must be multiples of 16 (e.g. 112, or [48, 96]), got {input_size}")
        self.embedding_size = embedding_size
        self.input_size = recorded(hw)
        self.input_hw = hw
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, 2, bias=False),
                                       nn.BatchNorm2d(planes, eps=1e-5))
            stage = [IBasicBlock(inplanes, planes, 2, downsample, se=se)]
            stage += [IBasicBlock(planes, planes, se=se) for _ in range(1, blocks)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * (hw[0] // 16) * (hw[1] // 16), embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as insightface: the embedding BN scale is fixed
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.input_hw:
            h, w = self.input_hw
            raise InputError(f"iResNet expects N x 3 x {h} x {w} input, got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x) if not self.grad_checkpointing else self._checkpointed_stage(stage, x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def _checkpointed_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for block in stage:
            x = self.run_block(block, x)
        return x


def _cfg(depth: int, params: Optional[int] = None) -> ModelCfg:
    return ModelCfg(family="iresnet", embedding_size=512, paper=PAPER, reference_params=params,
                    description=f"iResNet-{depth} (insightface arcface_torch layout), 512-d by default")


@register_model(_cfg(18))
def iresnet18(**kwargs: Any) -> IResNet:
    return IResNet((2, 2, 2, 2), **kwargs)


@register_model(_cfg(34))
def iresnet34(**kwargs: Any) -> IResNet:
    return IResNet((3, 4, 6, 3), **kwargs)


@register_model(_cfg(50))
def iresnet50(**kwargs: Any) -> IResNet:
    return IResNet((3, 4, 14, 3), **kwargs)


@register_model(_cfg(100))
def iresnet100(**kwargs: Any) -> IResNet:
    return IResNet((3, 13, 30, 3), **kwargs)
