"""The one operation registry shared by the search supernet and the final networks.

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

import functools
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..registry import Registry

OpBuilder = Callable[[int, int, bool, str], nn.Module]
OPS: Registry[OpBuilder] = Registry("operation")

ACTIVATIONS = ("prelu", "relu")


@functools.lru_cache(maxsize=None)
def _onnx_export_flags():
    """The two flags ``torch.onnx.is_in_onnx_export()`` reads, imported once: that function imports both modules
    on every call (about 18 us, which came to a tenth of a small search step's Python time). None where a torch
    version keeps them elsewhere (the public function is used then)."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return None
    return _flags, GLOBALS


def _in_onnx_export() -> bool:
    flags = _onnx_export_flags()
    if flags is None:
        return torch.onnx.is_in_onnx_export()
    return bool(flags[1].in_onnx_export or flags[0]._is_onnx_exporting)


def _eager_cpu(x: torch.Tensor) -> bool:
    """Whether pocketnas's own CPU kernels below may run on ``x``: eager CPU work, not tracing, ONNX export or
    ``torch.compile`` (which see torch's operations)."""
    return (x.device.type == "cpu" and not torch.jit.is_tracing() and not _in_onnx_export()
            and not torch.compiler.is_compiling())


class _PReLUFunction(torch.autograd.Function):
    """PReLU (He et al., "Delving Deep into Rectifiers", ICCV 2015, eq. 1: f(x) = max(0, x) + a min(0, x)) with
    torch's forward kernel and a backward written in vectorised elementwise operations.

    Backward: dL/dx = g where x > 0, else a g; dL/da = sum over the non-channel axes of g x where x <= 0. The same
    values as torch's kernel (the input gradient bit for bit, the slope gradient up to summation order), but torch
    2.13's CPU ``_prelu_kernel_backward`` takes about 390 us on a 32x8x28x28 tensor, 11x its forward, and was a
    fifth of a search step (profiled on the CPU search configuration); this one takes a third of that."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g_pos = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        g_neg = grad - g_pos                                    # grad where x <= 0, else 0 (exact)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(g_pos, g_neg, weight.view(1, -1, *([1] * (x.dim() - 2))))
        if ctx.needs_input_grad[1]:
            dims = [0] + list(range(2, x.dim())) if weight.numel() > 1 else list(range(x.dim()))
            grad_w = (g_neg * x).sum(dims).view_as(weight)
        return grad_x, grad_w


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same parameter, same state-dict key, same values) whose backward pass on CPU is two to three
    times faster (see :class:`_PReLUFunction`). Inference, CUDA, tracing, compilation and export use torch's own
    operation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) and x.dim() >= 2
                and _eager_cpu(x)):
            return _PReLUFunction.apply(x, self.weight)
        return F.prelu(x, self.weight)


class _NarrowChannelsLastBatchNorm(torch.autograd.Function):
    """scale * BatchNorm(x): training-mode BatchNorm without affine parameters (Ioffe & Szegedy, ICML 2015,
    Algorithm 1, biased batch variance) of a channels-last map, times a scalar (a mixed operation's softmax weight,
    DARTS eq. 2), computed on the map's (N*H*W, C) matrix view: the per-channel sums are matrix products with a row
    of ones, the variance is taken about the mean (two passes, no cancellation).

    Backward (the same paper, section 3), with g the output gradient and xhat the normalised input:
    d scale = sum(g * xhat); dx = scale * invstd * (g - mean(g) - xhat * mean(g * xhat)), means per channel.
    torch 2.13's channels-last BatchNorm on this AVX-512 machine is slow for channel counts that are not a multiple
    of 16 (forward + backward on 32x8x28x28: 824 us; NCHW 215 us); this takes 322 us there (measured, same values
    to 1e-5). Wider maps keep torch's kernel, which is faster from 16 channels on."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, eps: float):
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: x is channels-last
        ones = rows.new_ones(1, rows.shape[0])
        mean = (ones @ rows) / rows.shape[0]
        centred = rows - mean
        var = (ones @ (centred * centred)) / rows.shape[0]
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(centred, invstd, scale)
        ctx.mark_non_differentiable(mean, var)
        out = centred * (invstd * scale)
        return out.view(n, h, w, c).permute(0, 3, 1, 2), mean.view(c), var.view(c)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _mean, _var):
        centred, invstd, scale = ctx.saved_tensors
        n, c, h, w = grad.shape
        g = grad.permute(0, 2, 3, 1).reshape(-1, c)
        ones = g.new_ones(1, g.shape[0])
        xhat = centred * invstd
        g_sum = ones @ g
        gx_sum = ones @ (g * xhat)
        d_scale = gx_sum.sum().view_as(scale) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:
            m = g.shape[0]
            dx = torch.addcmul(g - g_sum / m, xhat, gx_sum / m, value=-1) * (invstd * scale)
            dx = dx.view(n, h, w, c).permute(0, 3, 1, 2)
        return dx, d_scale, None


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same buffers, same state-dict keys, same values) with two additions for the search:

    * ``forward(x, scale)`` returns ``scale * BatchNorm(x)`` for a scalar tensor ``scale`` (a mixed operation's
      softmax weight, DARTS eq. 2);
    * narrow (< 16 channels) channels-last CPU maps without affine parameters in training mode go through
      :class:`_NarrowChannelsLastBatchNorm`, which folds the scale into the normalisation (no multiplication of
      its own), with the running statistics updated as torch does.

    Everything else is torch's own operation (inference, export, tracing, compilation, CUDA)."""

    own_kernel = True  # False: torch's kernel only (the plain formulation, see use_torch_kernels)

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch_stats = self.training or not self.track_running_stats
        if (self.own_kernel and batch_stats and not self.affine and x.dim() == 4 and x.shape[1] < 16
                and x.dtype == torch.float32 and x.shape[0] * x.shape[2] * x.shape[3] > 1
                and x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous() and _eager_cpu(x)):
            y, mean, var = _NarrowChannelsLastBatchNorm.apply(x, x.new_ones(()) if scale is None else scale,
                                                             self.eps)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                    m = x.shape[0] * x.shape[2] * x.shape[3]
                    self.running_mean.mul_(1 - f).add_(mean, alpha=f)
                    self.running_var.mul_(1 - f).add_(var * (m / (m - 1)), alpha=f)
            return y
        # torch's kernel: the scale as a multiplication after it (as its affine weight, torch 2.13's channels-last
        # backward is 6x slower at 16 channels, and it misreads a stride-0 weight)
        return super().forward(x) if scale is None else scale * super().forward(x)


def _depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """The weight gradient of a depthwise convolution (Chollet, "Xception", CVPR 2017: one kxk filter per channel),
    itself computed as a depthwise convolution:

        dW[c, i, j] = sum_{n, h, w} g[n, c, h, w] x_pad[n, c, s*h + d*i, s*w + d*j]

    is, for each (sample, channel) plane, the cross-correlation of the padded input with the output gradient as
    the kernel (dilation s, stride d), summed over the samples: one grouped convolution over the N*C planes, for
    which torch's forward kernel is fast. Differentiable (double backward works)."""
    n, c, h, w = x.shape
    planes = x.contiguous().view(1, n * c, h, w)
    kernels = grad.contiguous().view(n * c, 1, grad.shape[2], grad.shape[3])
    out = F.conv2d(planes, kernels, None, stride=dilation, padding=padding, dilation=stride, groups=n * c)
    return out[..., :kernel[0], :kernel[1]].reshape(n, c, kernel[0], kernel[1]).sum(0).unsqueeze(1)


class _DepthwiseConvFunction(torch.autograd.Function):
    """A depthwise convolution with torch's forward and input gradient and :func:`_depthwise_weight_grad` for the
    weight gradient: torch 2.13's CPU weight gradient is fast for 3x3 kernels only, and took 518 us (5x5) and
    838 us (7x7) on a 32x8x28x28 channels-last map here, against 177 and 219 us this way (measured from 4x4 to
    56x56 maps: 2.4-3.8x faster at stride 1 on maps of 14x14 and more, 1.3-2.1x on smaller maps and at stride 2;
    undilated 3x3 stays with torch, whose kernel is faster there)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, dilation, False,
                                                         [0, 0], x.shape[1], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_weight_grad(x, grad, weight.shape[2:], stride, padding, dilation)
        return grad_x, grad_w, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with one filter per channel and no bias (same parameter, same state-dict key, same values)
    whose weight gradient on CPU comes from :class:`_DepthwiseConvFunction` when the kernel reaches past 3x3
    (5x5, 7x7, dilated 3x3). Inference, CUDA, tracing, compilation and export use torch's own operation."""

    def __init__(self, channels: int, kernel: int, stride: int, padding: int, dilation: int = 1):
        super().__init__(channels, channels, kernel, stride, padding, dilation=dilation, groups=channels, bias=False)
        self.own_weight_grad = dilation * (kernel - 1) + 1 > 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.own_weight_grad and torch.is_grad_enabled() and self.weight.requires_grad and x.dim() == 4
                and self.padding_mode == "zeros" and _eager_cpu(x)):
            return _DepthwiseConvFunction.apply(x, self.weight, self.stride, self.padding, self.dilation)
        return super().forward(x)


def use_torch_kernels(module: nn.Module) -> nn.Module:
    """torch's own kernels throughout ``module`` (the plain formulation that benchmarks compare against): every
    pocketnas :class:`PReLU` replaced by ``nn.PReLU`` with the same slopes, and :class:`DepthwiseConv2d`,
    :class:`BatchNorm2d` and :class:`AvgPool2d` told to use torch's operations only. The same values up to float
    rounding; returns ``module``."""
    for name, child in list(module.named_children()):
        if type(child) is PReLU:
            plain = nn.PReLU(child.num_parameters).to(child.weight.device)
            with torch.no_grad():
                plain.weight.copy_(child.weight)
            setattr(module, name, plain)
        else:
            if isinstance(child, DepthwiseConv2d):
                child.own_weight_grad = False
            elif isinstance(child, (BatchNorm2d, AvgPool2d)):
                child.own_kernel = False
            use_torch_kernels(child)
    return module


def activation(name: str, channels: int) -> nn.Module:
    """PocketNet uses PReLU everywhere DARTS used ReLU."""
    if name == "prelu":
        return PReLU(channels)
    if name == "relu":
        return nn.ReLU(inplace=False)
    raise InputError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")


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


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` (same values up to float rounding, no state) whose stride-1 windows over maps of 14x14 and
    more, channels-last on CPU, are computed as a depthwise convolution with a constant all-ones kernel followed by
    a multiplication with the reciprocal window counts (padding excluded when ``count_include_pad`` is False):
    torch 2.13's CPU average pool took 468 us forward and 685 us forward + backward on a 32x8x28x28 channels-last
    map here, against 105 and 263 us this way (at 56x56, 1213 against 321 us). Smaller maps, strides above 1,
    NCHW, tracing, compilation and export use torch's operation (faster there, or what an exporter sees)."""

    own_kernel = True  # False: torch's kernel only (the plain formulation, see use_torch_kernels)
    _counts: Optional[torch.Tensor] = None  # reciprocal window counts of the last map size seen

    def _box(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        k, s, p = self.kernel_size, self.stride, self.padding
        if not (self.own_kernel and isinstance(k, int) and s in (1, (1, 1)) and isinstance(p, int)
                and not self.ceil_mode and self.divisor_override is None and x.dim() == 4
                and x.shape[2] * x.shape[3] >= 196
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                and x.dtype == torch.float32 and _eager_cpu(x)):
            return None
        c, h, w = x.shape[1:]
        ones = x.new_ones(1, 1, k, k).expand(c, 1, k, k)
        total = F.conv2d(x, ones, None, 1, p, 1, c)
        if self.count_include_pad:
            return total * (1.0 / (k * k))
        counts = self._counts
        if counts is None or counts.shape[2:] != (h, w) or counts.dtype != x.dtype or counts.device != x.device:
            counts = F.conv2d(x.new_ones(1, 1, h, w), x.new_ones(1, 1, k, k), None, 1, p).reciprocal_()
            self._counts = counts
        return total * counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._box(x)
        return super().forward(x) if out is None else out


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
