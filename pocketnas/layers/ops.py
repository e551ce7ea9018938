"""The operations cells are made of: one registry shared by the search supernet and the final networks.

Every candidate operation is built as ``make_op(name, C, stride, affine, act)``; search-space files name these
operations. Two families are registered:

* PocketNet's eight (Boutros et al., "PocketNet: Extreme Lightweight Face Recognition Network using Neural
  Architecture Search and Multi-Step Knowledge Distillation", IEEE Access 2022): ``max_pool_3x3``,
  ``avg_pool_3x3``, ``skip_connect``, ``dw_conv_{1,3,5,7}x{..}``, ``none``.
* The original DARTS set (Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019): ``sep_conv_3x3/5x5``,
  ``dil_conv_3x3/5x5`` plus the shared pools, ``skip_connect`` and ``none``.

Module attribute names (``net``, ``bn``, ``relu``, ``conv11`` ...) reproduce the original release's state-dict keys
so its ``backbone.pth`` files load unchanged.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..registry import Registry
from .kernels import AvgPool2d, BatchNorm2d, DepthwiseConv2d, PReLU

OpBuilder = Callable[[int, int, bool, str], nn.Module]
OPS: Registry[OpBuilder] = Registry("operation")

# activations by name, each a builder (channels -> module); a search space names one. A new activation is one
# registered builder (and the parametrised tests pick it up)
ACTIVATIONS: Registry[Callable[[int], nn.Module]] = Registry("activation")
ACTIVATIONS.add("prelu", lambda channels: PReLU(channels))  # PocketNet: PReLU everywhere DARTS used ReLU
ACTIVATIONS.add("relu", lambda channels: nn.ReLU(inplace=False))  # DARTS


def activation(name: str, channels: int) -> nn.Module:
    """The registered activation ``name`` for ``channels`` channels."""
    if name not in ACTIVATIONS:
        raise InputError(ACTIVATIONS.unknown_message(name))
    return ACTIVATIONS.get(name)(channels)


class DwConv(nn.Module):
    """act -> depthwise kxk (stride, dilation) -> pointwise 1x1 -> BatchNorm (PocketNet's ``dw_conv_kxk``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                 affine: bool = True, act: str = "prelu"):
        super().__init__()
        self.net = nn.Sequential(
            activation(act, c_in),
            DepthwiseConv2d(c_in, kernel, stride, padding, dilation),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            BatchNorm2d(c_out, affine=affine),
        )

    scales_output = True  # forward(x, scale) = scale * forward(x), the scale passed to the closing BatchNorm

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        act, depthwise, pointwise, bn = self.net
        return bn(pointwise(depthwise(act(x))), scale)


class SepConv(nn.Module):
    """DARTS separable convolution: two stacked depthwise-separable convolutions, the first carrying the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True,
                 act: str = "relu"):
        super().__init__()
        self.net = nn.Sequential(
            DwConv(c_in, c_in, kernel, stride, padding, affine=affine, act=act),
            DwConv(c_in, c_out, kernel, 1, padding, affine=affine, act=act),
        )

    scales_output = True

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net[1](self.net[0](x), scale)



class PoolBN(nn.Module):
    """3x3 max or average pool (padding 1, averages exclude padding) followed by BatchNorm."""

    def __init__(self, kind: str, channels: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        if kind == "max":
            self.pool = nn.MaxPool2d(kernel, stride, padding)
        elif kind == "avg":
            self.pool = AvgPool2d(kernel, stride, padding, count_include_pad=False)
        else:
            raise ValueError(f"pool kind must be 'max' or 'avg', not {kind!r}")
        self.bn = BatchNorm2d(channels, affine=affine)

    scales_output = True

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.bn(self.pool(x), scale)


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset strided paths (PocketNet's form: depthwise + pointwise 1x1 each).

    act(x); path 1 = pointwise(depthwise_1x1_stride2(x)); path 2 the same on x shifted by one pixel; each path
    gives half the output channels; concatenate; BatchNorm. Unlike the original, odd map sizes work (the shifted
    path is zero-padded at the far edge so both paths have ceil(H/2) rows); even sizes give the original result.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True, act: str = "prelu"):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = activation(act, c_in)
        self.conv11 = nn.Conv2d(c_in, c_in, 1, stride=2, groups=c_in, bias=False)
        self.conv12 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.conv21 = nn.Conv2d(c_in, c_in, 1, stride=2, groups=c_in, bias=False)
        self.conv22 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.bn = BatchNorm2d(c_out, affine=affine)

    scales_output = True

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.relu(x)
        shifted = x
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            shifted = F.pad(x, (0, 1, 0, 1))
        shifted = shifted[:, :, 1:, 1:]
        out = torch.cat([self.conv12(self.conv11(x)), self.conv22(self.conv21(shifted))], dim=1)
        return self.bn(out, scale)


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output shape (only meaningful inside the search supernet)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def make_op(name: str, channels: int, stride: int, affine: bool = True, act: str = "prelu") -> nn.Module:
    """Build operation ``name`` on ``channels`` channels; ``stride`` 2 on edges leaving a reduction cell's inputs."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, not {stride}")
    return OPS.get(name)(channels, stride, affine, act)


def preprocess_op(c_in: int, c_out: int, reduction_prev: bool, affine: bool = True,
                  act: str = "prelu") -> nn.Module:
    """A cell's input preprocessing: factorized reduce after a reduction cell, else act -> dw 1x1 -> pw 1x1 -> BN."""
    if reduction_prev:
        return FactorizedReduce(c_in, c_out, affine, act)
    return DwConv(c_in, c_out, 1, 1, 0, affine=affine, act=act)


def is_parameter_free(name: str) -> bool:
    return name in ("none", "skip_connect")


OPS.add("none", lambda c, stride, affine, act: Zero(stride))
OPS.add("skip_connect",
        lambda c, stride, affine, act: nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine, act))
OPS.add("max_pool_3x3", lambda c, stride, affine, act: PoolBN("max", c, 3, stride, 1, affine))
OPS.add("avg_pool_3x3", lambda c, stride, affine, act: PoolBN("avg", c, 3, stride, 1, affine))


def _dw(kernel: int) -> OpBuilder:
    return lambda c, stride, affine, act: DwConv(c, c, kernel, stride, kernel // 2, affine=affine, act=act)


def _sep(kernel: int) -> OpBuilder:
    return lambda c, stride, affine, act: SepConv(c, c, kernel, stride, kernel // 2, affine, act)


def _dil(kernel: int) -> OpBuilder:
    return lambda c, stride, affine, act: DwConv(c, c, kernel, stride, kernel - 1, dilation=2, affine=affine,
                                                 act=act)


for _k in (1, 3, 5, 7):
    OPS.add(f"dw_conv_{_k}x{_k}", _dw(_k))
for _k in (3, 5):
    OPS.add(f"sep_conv_{_k}x{_k}", _sep(_k))
    OPS.add(f"dil_conv_{_k}x{_k}", _dil(_k))
